"""The time view on Spark against the native one: two series keyed by ``host`` (21 days at 10-minute
steps, a daily cycle, each its own level), a contextual dip planted inside the global range.

The native stages and the Spark job bodies (in the session's local SparkSession, ``local[2]``) run
the default config with ``time.series_key: host``; the context is the native one row for row, the
default ensemble joined with the time view flags the same rows, and both write ``events.csv``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from spark_helpers import flagged_positions, java_available, run_in_process, write_run

from anomaly_detection.config import load_config
from anomaly_detection.pipeline import stages, timeview

pytestmark = [
    pytest.mark.slow,
    pytest.mark.airflow_lane,  # Spark, as test_spark_parity.py: the airflow lane has the room
    pytest.mark.skipif(not java_available(), reason="Java is not on PATH"),
]
DAYS, STEP_MINUTES = 21, 10
DIP_DAY, DIP_HOUR, DIP_POINTS = 15, 14, 6


def time_table(seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """Hosts ``a`` (level 100) and ``b`` (level 300), a daily cycle of amplitude 20, noise; on day
    ``DIP_DAY`` host ``a`` drops at its daily peak to its nightly low for an hour. Rows interleave
    the hosts, in time order. Returns the table and the positions of the dip's rows."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(
        "2026-03-01", periods=DAYS * 24 * 60 // STEP_MINUTES, freq=f"{STEP_MINUTES}min", tz="UTC"
    )
    frames = []
    for host, level in (("a", 100.0), ("b", 300.0)):
        hours = (times.hour + times.minute / 60).to_numpy()
        value = level + 20 * np.sin(2 * np.pi * (hours - 8) / 24) + rng.normal(0, 1.0, len(times))
        dip = np.zeros(len(times), dtype=bool)
        if host == "a":
            start = np.flatnonzero((times.day == 1 + DIP_DAY) & (times.hour == DIP_HOUR))[0]
            dip[start : start + DIP_POINTS] = True
            value[dip] = level - 20 + rng.normal(0, 1.0, DIP_POINTS)
        frames.append(pd.DataFrame({"ts": times, "host": host, "value": value, "_dip": dip}))
    table = pd.concat(frames).sort_values(["ts", "host"], kind="stable").reset_index(drop=True)
    dips = np.flatnonzero(table.pop("_dip").to_numpy())
    return table, dips


@pytest.fixture(scope="module")
def runs(tmp_path_factory, spark_session):
    table, dips = time_table()
    overrides = {"time": {"series_key": "host"}}
    native, native_config = write_run(tmp_path_factory.mktemp("time_native"), table, overrides)
    config = load_config(native_config)
    stages.preprocess_stage(config, native)
    stages.detect_stage(config, native, "ensemble")
    stages.select_stage(config, native)

    spark, spark_config = write_run(tmp_path_factory.mktemp("time_spark"), table, overrides)
    for job in ("preprocess", "detect"):
        run_in_process(spark_session, job, spark.root, spark_config)
    stages.select_stage(load_config(spark_config), spark, run_meta={"mode": "spark"})
    return {"native": native, "spark": spark, "dips": dips}


def test_the_spark_context_is_the_native_context(runs):
    native = pd.read_parquet(timeview.context_path(runs["native"].root))
    spark = pd.read_parquet(runs["spark"].root / timeview.SPARK_CONTEXT_DIR).sort_values("_pos")
    assert spark["_pos"].tolist() == list(range(len(native)))
    for column in ("_series", "_order", "value|view", "value|season"):
        np.testing.assert_array_equal(spark[column].to_numpy(), native[column].to_numpy(), err_msg=column)
    for column in ("value|score", "value|typical"):
        np.testing.assert_allclose(
            spark[column].to_numpy(), native[column].to_numpy(), rtol=1e-9, err_msg=column
        )
    summaries = [
        json.loads(paths.summary.read_text())["time_context"] for paths in (runs["native"], runs["spark"])
    ]
    assert summaries[0]["applied"] and summaries[1] == summaries[0]


def test_spark_and_native_flag_the_same_rows_and_the_dip(runs):
    native = flagged_positions(runs["native"], "ensemble")
    spark = flagged_positions(runs["spark"], "ensemble")
    overlap = len(np.intersect1d(native, spark)) / max(1, len(np.union1d(native, spark)))
    print(f"\ntime view: native flags {len(native)}, Spark {len(spark)}, overlap |A∩B|/|A∪B| {overlap:.2%}")
    assert overlap >= 0.9
    for flagged in (native, spark):
        assert np.isin(runs["dips"], flagged).sum() >= DIP_POINTS // 2


def test_both_paths_write_events(runs):
    for paths in (runs["native"], runs["spark"]):
        events = pd.read_csv(timeview.events_path(paths.root))
        assert len(events) >= 1 and set(events["series"]) <= {"a", "b"}
        results = json.loads(paths.results.read_text())
        assert results["events"]["count"] == len(events)
    anomalies = pd.read_csv(runs["spark"].anomalies)
    dip_rows = anomalies[anomalies["row"].isin(runs["dips"])]
    assert dip_rows["explanation"].str.contains("value ").any()


def test_time_series_and_the_fixed_share_join_match_native(runs, spark_session, tmp_path):
    """``time_series`` alone, and the ensemble joined with the time view at a fixed 1 %."""
    import yaml

    flagged = {}
    for engine in ("native", "spark"):
        paths = runs[engine]
        document = yaml.safe_load(paths.config.read_text())
        document["modeling"].update(contamination=0.01, algorithms=["ensemble", "time_series"])
        path = tmp_path / f"{engine}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        config = load_config(path)
        for algorithm in ("ensemble", "time_series"):
            if engine == "native":
                stages.detect_stage(config, paths, algorithm)
            else:
                run_in_process(spark_session, "detect", paths.root, path, algorithm=algorithm)
            flagged[engine, algorithm] = flagged_positions(paths, algorithm)
    np.testing.assert_array_equal(flagged["spark", "time_series"], flagged["native", "time_series"])
    native, spark = flagged["native", "ensemble"], flagged["spark", "ensemble"]
    overlap = len(np.intersect1d(native, spark)) / max(1, len(np.union1d(native, spark)))
    print(f"\nfixed 1 %: native flags {len(native)}, Spark {len(spark)}, overlap {overlap:.2%}")
    assert overlap >= 0.9 and set(runs["dips"]) <= set(spark)
