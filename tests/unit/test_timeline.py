"""Finding and reading the time column, and counting rows and anomalies per time bucket."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anomaly_detection.report import timeline

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def test_iso_text_epoch_numbers_and_datetimes_parse_to_the_same_instant():
    expected = T0 + pd.Timedelta(minutes=17)
    seconds = expected.value // 10**9
    for values in (
        pd.Series(["2026-01-01T00:17:00Z"]),
        pd.Series(["2026-01-01 00:17:00+00:00"]),
        pd.Series([seconds]),
        pd.Series([seconds * 1000]),  # USGS style milliseconds
        pd.Series([seconds * 10**6]),
        pd.Series([expected]),
    ):
        assert timeline.parse_times(values).iloc[0] == expected, values


def test_garbage_and_implausible_instants_become_nat():
    parsed = timeline.parse_times(pd.Series(["not a time", None, "2026-02-30"]))
    assert parsed.isna().all()
    assert timeline.parse_times(pd.Series([True, False])).isna().all()
    assert timeline.parse_times(pd.Series([1e30])).isna().all()


def test_the_time_column_is_detected_by_name_and_values():
    head = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "update_time": ["soon", "later", "never"],  # named like time, not parseable
            "properties.time": [1.7e12, 1.7e12 + 60_000, 1.7e12 + 120_000],
            "value": [1.0, 2.0, 3.0],
        }
    )
    assert timeline.detect_time_column(head) == "properties.time"
    assert timeline.detect_time_column(head[["id", "value"]]) is None
    assert timeline.detect_time_column(head, "value") == "value"  # configured wins
    with pytest.raises(KeyError, match="time.column 'nope' is not a column"):
        timeline.detect_time_column(head, "nope")


def test_buckets_count_every_row_and_the_flagged_ones():
    minutes = np.array([0, 1, 2, 59, 60, 61, 180, 181], dtype=np.int64)
    times = (T0.value + minutes * 60 * 10**9).astype(np.int64)
    times = np.append(times, timeline.NAT)  # one row without a time
    flagged = np.array([2, 6, 8])
    buckets = timeline.bucket_counts(times, flagged)
    assert buckets.width == "5 minutes"
    assert buckets.rows.sum() == 8 and buckets.anomalies.sum() == 2
    assert buckets.undated_rows == 1 and buckets.undated_anomalies == 1
    assert len(buckets.starts) <= timeline.MAX_BUCKETS
    first = buckets.starts[0].astype("datetime64[ns]").astype(np.int64)
    assert first == T0.value
    # only the kept rows count as rows
    kept = np.array([0, 1, 2, 3])
    assert timeline.bucket_counts(times, flagged, kept).rows.sum() == 4
    assert timeline.bucket_counts(np.full(3, timeline.NAT), flagged[:1]) is None


def test_read_times_streams_one_column_of_part_files(tmp_path):
    directory = tmp_path / "flattened.parquet"
    directory.mkdir()
    stamps = [f"2026-01-01T00:{m:02d}:00Z" for m in range(6)]
    pq.write_table(pa.table({"t": stamps[:4], "x": range(4)}), directory / "part-000000.parquet")
    pq.write_table(pa.table({"t": stamps[4:], "x": range(2)}), directory / "part-000001.parquet")
    got = timeline.read_times(directory, "t")
    assert got.tolist() == [T0.value + m * 60 * 10**9 for m in range(6)]
