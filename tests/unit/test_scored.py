"""anomaly_detection.detect.scored: the scored outputs and the bounded readers of Parquet files or part-file
directories, on tiny in-memory tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anomaly_detection.detect import scored


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {"id": np.arange(25), "name": [f"r{i}" for i in range(25)], "value": np.linspace(0, 1, 25)}
    )


def as_parts(frame: pd.DataFrame, directory, sizes: list[int]) -> None:
    """Write ``frame`` as part files of the given sizes, named so that they sort in row order."""
    directory.mkdir()
    start = 0
    for i, size in enumerate(sizes):
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[start : start + size], preserve_index=False),
            directory / f"part-{i:06d}.parquet",
        )
        start += size
    (directory / "_SUCCESS").write_text("")  # Spark's marker is not data
    pq.write_table(pa.table({"id": [999]}), directory / ".part-000099.parquet.tmp")  # nor is a temporary file


@pytest.mark.parametrize("layout", ["file", "parts"])
def test_rows_at_returns_the_rows_in_the_order_asked(tmp_path, table, layout):
    path = tmp_path / "flattened.parquet"
    if layout == "file":
        table.to_parquet(path, index=False)
    else:
        as_parts(table, path, [7, 0, 10, 8])
    positions = np.array([24, 3, 7, 6, 17, 0, 16])
    got = scored.rows_at(path, positions)
    pd.testing.assert_frame_equal(got, table.iloc[positions].reset_index(drop=True))
    assert scored.row_count(path) == 25
    pd.testing.assert_frame_equal(scored.head(path, 9), table.head(9))
    assert scored.rows_at(path, np.array([], dtype=np.int64)).columns.tolist() == ["id", "name", "value"]


def test_rows_at_names_a_position_outside_the_table(tmp_path, table):
    path = tmp_path / "t.parquet"
    table.to_parquet(path, index=False)
    with pytest.raises(IndexError, match="row position 25 is outside"):
        scored.rows_at(path, np.array([3, 25]))


def test_read_flagged_orders_by_score_then_position_across_part_files(tmp_path):
    directory = tmp_path / "kmeans.flagged.parquet"
    directory.mkdir()
    pq.write_table(
        scored.flagged_table(np.array([9, 2]), np.array([0.5, 0.9]), np.array([[0.1], [0.2]])),
        directory / "part-00000.parquet",
    )
    pq.write_table(
        scored.flagged_table(np.array([4, 1]), np.array([0.9, 0.7]), np.array([[0.3], [0.4]])),
        directory / "part-00001.parquet",
    )
    got = scored.read_flagged(directory)
    assert got["position"].tolist() == [2, 4, 1, 9] and got["score"].tolist() == [0.9, 0.9, 0.7, 0.5]
    assert list(got.columns) == ["position", "score"]
    assert scored.read_flagged(directory, features=True)["f0"].tolist() == [0.2, 0.3, 0.4, 0.1]


def test_write_native_keeps_flagged_rows_and_a_bounded_sample_with_the_top_list(tmp_path):
    rng = np.random.default_rng(0)
    n = 1_000
    X = rng.uniform(size=(n, 3))
    scores = rng.uniform(size=n)
    labels = (scores > np.quantile(scores, 0.9)).astype(np.int8)
    positions = np.arange(n) * 2 + 5  # kept rows are every other row of the flattened table
    scored.write_native(
        tmp_path,
        "kmeans",
        scores=scores,
        labels=labels,
        positions=positions,
        X=X,
        plot_sample_size=200,
        top_anomalies=30,
        seed=1,
    )
    flagged = scored.read_flagged(scored.flagged_path(tmp_path, "kmeans"), features=True)
    assert len(flagged) == labels.sum() and set(flagged["position"]) == set(positions[labels == 1])
    assert flagged["score"].is_monotonic_decreasing
    np.testing.assert_array_equal(
        flagged[["f0", "f1", "f2"]].to_numpy(), X[(flagged["position"].to_numpy() - 5) // 2]
    )

    sample = scored.read_sample(scored.sample_path(tmp_path, "kmeans"))
    assert sample["sampled"].sum() == 200 and 200 <= len(sample) <= 230
    assert set(flagged["position"][:30]) <= set(sample["position"])  # the top list is always drawn
    rows = (sample["position"].to_numpy() - 5) // 2
    np.testing.assert_array_equal(sample[["f0", "f1", "f2"]].to_numpy(), X[rows])
    np.testing.assert_array_equal(sample["score"].to_numpy(), scores[rows])
    np.testing.assert_array_equal(sample["anomaly"].to_numpy(), labels[rows])
    # deterministic for a seed
    (tmp_path / "again").mkdir()
    scored.write_native(
        tmp_path / "again",
        "kmeans",
        scores=scores,
        labels=labels,
        positions=positions,
        X=X,
        plot_sample_size=200,
        top_anomalies=30,
        seed=1,
    )
    pd.testing.assert_frame_equal(
        scored.read_sample(scored.sample_path(tmp_path / "again", "kmeans")), sample
    )


def test_a_small_run_samples_every_row(tmp_path):
    scores = np.array([0.1, 0.9, 0.2])
    scored.write_native(
        tmp_path,
        "iforest",
        scores=scores,
        labels=np.array([0, 1, 0]),
        positions=np.arange(3),
        X=np.eye(3),
        plot_sample_size=100,
        top_anomalies=5,
        seed=0,
    )
    sample = scored.read_sample(scored.sample_path(tmp_path, "iforest"))
    assert sample["position"].tolist() == [0, 1, 2] and sample["sampled"].all()


def test_a_model_that_flags_no_row_writes_an_empty_table_with_its_feature_columns():
    table = scored.flagged_table(np.array([], dtype=np.int64), np.array([]), np.empty((0, 3)))
    assert table.num_rows == 0 and table.column_names == [
        "position",
        "score",
        *map(scored.feature_column, range(3)),
    ]
