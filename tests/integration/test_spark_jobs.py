"""The Spark jobs (spark_jobs/preprocess.py, spark_jobs/detect.py) through real spark-submit in
local[2]: the session's reference run (``spark_reference``, tests/integration/conftest.py) compared
with the native preprocessing and KMeans, then read by the native select and report stages; the
spark-submit command line; a job's one-line failure. The preprocess job's parity with the native
roles, feature plan and values on a taxi-like table runs in the session's local SparkSession
(``spark_session``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from spark_helpers import (
    JOB_TIMEOUT,
    N_DUPLICATES,
    N_OUTLIERS,
    QUICK_JVM,
    REFERENCE_ROWS,
    copy_run,
    requires_spark,
    run_in_process,
    spark_features,
    write_run,
)

from anomaly_detection.config import load_config
from anomaly_detection.detect.detectors.centroids import kmeans
from anomaly_detection.detect.grid import DetectorSettings
from anomaly_detection.detect.scored import flagged_path, read_flagged, read_sample, sample_path
from anomaly_detection.errors import PipelineError
from anomaly_detection.features.derive import FeaturePlan
from anomaly_detection.features.preprocess import find_duplicate_rows, preprocess
from anomaly_detection.pipeline.stages import report_stage, select_stage
from anomaly_detection.runs import spark_jobs_dir
from anomaly_detection.spark.jobs import features as spark_feature_rules
from anomaly_detection.spark.submit import (
    failure_cause,
    job_application_args,
    spark_env,
    spark_submit_command,
    spark_submit_executable,
)

pytestmark = pytest.mark.slow
MASTER = "local[2]"
N_ROWS = REFERENCE_ROWS
#: Every row is scored: the generated table's duplicates included.
N_SCORED = N_ROWS + N_DUPLICATES


@pytest.fixture(scope="module")
def spark_run(spark_reference):
    """The reference run's outputs, its config and input, and the native preprocessing of that input."""
    paths = spark_reference.paths
    config = load_config(spark_reference.config_path)
    native = preprocess(
        pd.read_parquet(paths.flattened),
        config.processing,
        label_column=config.evaluation.label_column,
        random_state=config.modeling.random_state,
    )
    return {
        "paths": paths,
        "config": config,
        "table": spark_reference.table,
        "planted": spark_reference.planted,
        "native": native,
        "timings": spark_reference.timings,
    }


# --------------------------------------------------------------------------- the helper (no JVM)


def test_spark_submit_command_line(tmp_path):
    command = spark_submit_command(
        "detect",
        tmp_path,
        tmp_path / "c.yaml",
        master=MASTER,
        extra_args=["--algorithm", "kmeans"],
        conf={"spark.executor.memory": "1g"},
    )
    assert command[0] == str(spark_submit_executable()) and Path(command[0]).is_file()
    assert command[1:3] == ["--master", MASTER]
    confs = dict(command[i + 1].split("=", 1) for i, part in enumerate(command) if part == "--conf")
    assert confs["spark.pyspark.python"] == sys.executable
    assert confs["spark.pyspark.driver.python"] == sys.executable
    assert confs["spark.driver.host"] == confs["spark.driver.bindAddress"] == "127.0.0.1"
    assert confs["spark.ui.enabled"] == "false" and confs["spark.executor.memory"] == "1g"
    script = command.index(str(spark_jobs_dir() / "detect.py"))
    assert command[script + 1 :] == [
        *job_application_args(tmp_path, tmp_path / "c.yaml"),
        "--algorithm",
        "kmeans",
    ]
    assert job_application_args("r", "c", "kmeans") == [
        "--run-dir",
        "r",
        "--config",
        "c",
        "--algorithm",
        "kmeans",
    ]
    cluster = spark_submit_command("preprocess", tmp_path, tmp_path / "c.yaml", master="spark://h:7077")
    assert not any(part.startswith("spark.driver.host") for part in cluster)
    assert spark_env(MASTER, {})["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert failure_cause("WARN x\nerror: DataError: no rows\nmore\n") == "DataError: no rows"
    assert failure_cause("a\nb\n", tail=1) == "b"
    with pytest.raises(PipelineError, match="unknown Spark job"):
        spark_submit_command("nope", tmp_path, tmp_path / "c.yaml")


def test_spark_submit_module_does_not_import_pyspark():
    code = (
        "import sys, anomaly_detection.spark.submit as s; "
        "s.spark_submit_command('preprocess', 'r', 'c'); "
        "assert 'pyspark' not in sys.modules, 'pyspark imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- the jobs


@requires_spark
def test_preprocess_job_writes_features_and_the_native_summary(spark_run):
    paths, native = spark_run["paths"], spark_run["native"]
    assert paths.spark_features.is_dir() and not paths.features.exists() and not paths.kept_rows.exists()
    kept, features, labels = spark_features(paths)
    summary = json.loads(paths.summary.read_text())

    assert kept.dtype == np.int64
    names = ["x", "y", "z", "count", "flag"]  # evenly spread cities and times: no rare code, no daily cycle
    assert features.shape == (N_SCORED, len(names)) and (features.dtypes == np.float64).all()
    assert np.array_equal(kept, native.rows) and np.array_equal(kept, np.arange(N_SCORED))  # no row dropped
    assert np.array_equal(labels, native.labels)
    assert list(features.columns) == native.feature_names == names
    values = features.to_numpy()
    assert not np.isnan(values).any() and values.min() >= 0.0 and values.max() <= 1.0

    assert list(summary) == list(native.summary)  # same keys, same order
    for key in summary:
        if key != "imputation":
            assert summary[key] == native.summary[key], key
    assert summary["duplicates"] == N_DUPLICATES
    repeats = np.sort(pd.read_parquet(paths.spark_duplicate_rows)["_pos"].to_numpy())
    assert np.array_equal(repeats, np.flatnonzero(native.duplicates))
    plan = FeaturePlan.from_dict(summary["feature_plan"])
    raw = plan.transform(spark_run["table"]).to_numpy(dtype=float)
    assert summary["imputed_values"] == int((~np.isfinite(raw)).sum())
    assert summary["infinite_values"] == int(np.isinf(raw).sum()) >= 1
    assert summary["imputation"].startswith("kmeans (")
    dropped = summary["columns_dropped"]
    assert dropped["event_id"].startswith("identifier: id-like name")
    assert dropped["seq"] == "identifier: integers stepping by a constant"
    assert dropped["const"] == "constant (3)"
    assert dropped["empty"] == "all values missing" and dropped["is_anomaly"] == "label column"
    assert dropped["city"] == "categorical: no rare value"
    roles = summary["roles"]
    assert roles["city"] == {"role": "categorical", "reason": "text with 3 distinct values"}
    assert roles["seen_at"]["role"] == "timestamp" and roles["flag"]["role"] == "boolean"

    # observed values are scaled exactly as natively; imputed ones come from Spark's own centroids
    observed = np.isfinite(raw[kept])
    assert np.array_equal(values[observed], native.features[observed])


@requires_spark
def test_detect_job_agrees_with_native_kmeans(spark_run):
    paths, config = spark_run["paths"], spark_run["config"]
    results = json.loads((paths.models / "kmeans.json").read_text())
    assert [r["params"] for r in results] == [{"n_clusters": 4}, {"n_clusters": 5}]
    expected = int(np.ceil(config.modeling.contamination * N_SCORED))  # a share of all rows
    assert all(r["anomaly_count"] == expected and r["info"]["engine"] == "spark" for r in results)
    best = max(results, key=lambda r: r["score"])

    flagged = read_flagged(flagged_path(paths.models, "kmeans"))
    assert flagged_path(paths.models, "kmeans").is_dir()  # Spark's part files, not a driver write
    assert len(flagged) == expected and flagged["position"].is_unique
    assert (flagged["score"] > best["threshold"]).all()
    # the report sample: a random sample of every row (3,025 <= plot_sample_size) plus the top list
    sample = read_sample(sample_path(paths.models, "kmeans"))
    assert len(sample) == N_SCORED and sample["sampled"].all()
    assert sample["anomaly"].sum() == expected
    assert set(sample.loc[sample["anomaly"] == 1, "position"]) == set(flagged["position"])
    # the threshold is the approxQuantile cut: every anomaly scores above it, no normal row does
    assert sample.loc[sample["anomaly"] == 0, "score"].max() <= best["threshold"]

    kept, features, _ = spark_features(paths)
    assert np.array_equal(sample["position"].to_numpy(), kept)
    np.testing.assert_array_equal(
        sample[[f"f{j}" for j in range(features.shape[1])]].to_numpy(), features.to_numpy()
    )
    settings = DetectorSettings(
        contamination=config.modeling.contamination, random_state=config.modeling.random_state
    )
    native = kmeans(features.to_numpy(), best["params"], settings)
    agreement = len(np.intersect1d(kept[native.labels == 1], flagged["position"])) / native.labels.sum()
    print(
        f"\nSpark vs native KMeans {best['params']}: top-{expected} agreement {agreement:.1%}; "
        f"reference run (spark-submit) timings {spark_run['timings']}"
    )
    assert agreement >= 0.8

    # the internal metrics of the best split equal scikit-learn's on the same rows; the silhouette
    # is ClusteringEvaluator's squared-Euclidean one
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    split = np.isin(kept, flagged["position"]).astype(int)
    X = features.to_numpy()
    assert best["silhouette"] == pytest.approx(silhouette_score(X, split, metric="sqeuclidean"), rel=1e-9)
    assert best["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, split), rel=1e-9)
    assert best["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, split), rel=1e-9)
    assert best["info"]["n_clusters"] == best["params"]["n_clusters"]

    # every planted outlier is flagged
    assert set(spark_run["planted"]) <= set(flagged["position"])
    assert best["recall"] == 1.0


@requires_spark
def test_native_select_and_report_read_the_spark_outputs(spark_run, tmp_path):
    paths, _ = copy_run(spark_run["paths"], tmp_path, "select")  # select and report write into the run
    config = spark_run["config"]
    assert not paths.ingest_info.exists()  # select tolerates its absence
    outcome = select_stage(config, paths)
    results = json.loads(paths.results.read_text())
    assert results["status"] == "succeeded"
    best = results["best"]
    # the best of the Spark results select reads (kmeans.json, isolation_forest.json), as they are
    written = {a: json.loads((paths.models / f"{a}.json").read_text()) for a in config.modeling.algorithms}
    assert best in written[best["algorithm"]]
    assert outcome["anomaly_count"] == best["anomaly_count"]
    anomalies = pd.read_csv(paths.anomalies)
    assert len(anomalies) == best["anomaly_count"]
    labelled = int(spark_run["table"]["is_anomaly"].sum())  # the planted outliers and their copies
    assert labelled >= N_OUTLIERS
    assert set(anomalies["is_anomaly"]) <= {0, 1} and anomalies["is_anomaly"].sum() == labelled
    assert anomalies["rank"].tolist() == list(range(1, len(anomalies) + 1))
    assert anomalies["score"].is_monotonic_decreasing
    # the CSV holds the original fields of the flagged positions
    flagged = read_flagged(flagged_path(paths.models, best["algorithm"]))
    original = spark_run["table"].iloc[flagged["position"]].reset_index(drop=True)
    np.testing.assert_array_equal(anomalies["seq"].to_numpy(), original["seq"].to_numpy())
    rows = results["rows"]
    assert rows["ingested"] == rows["scored"] == N_SCORED and rows["duplicates"] == N_DUPLICATES
    repeated = find_duplicate_rows(spark_run["table"])
    assert rows["duplicates_flagged"] == int(repeated[flagged["position"].to_numpy()].sum())
    report = report_stage(config, paths)
    assert report.is_file() and paths.published_report.is_file()
    assert "spark preprocess" in paths.log.read_text()  # the jobs log into the run's pipeline.log


@requires_spark
def test_preprocess_job_without_numeric_column_fails_with_one_line_cause(tmp_path):
    table = pd.DataFrame({"name": [f"n{i}" for i in range(30)], "city": ["Lyon", "Oslo", "Lima"] * 10})
    paths, config_path = write_run(tmp_path, table, {})
    command = spark_submit_command("preprocess", paths.root, config_path, master=MASTER, conf=QUICK_JVM)
    done = subprocess.run(command, capture_output=True, text=True, env=spark_env(MASTER), timeout=JOB_TIMEOUT)
    assert done.returncode != 0
    causes = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert causes == [
        "error: DataError: no usable numeric feature column; columns are: name (str), city (str)"
    ]
    assert failure_cause(done.stderr).startswith("DataError: no usable numeric feature column")
    assert not paths.spark_features.exists()


def parity_table(n: int = 600, seed: int = 5) -> pd.DataFrame:
    """A taxi-like table: a trip counter, a payment code, an epoch-ms ``time`` over three weeks (busy
    daytimes and weekdays), a
    pickup/dropoff pair of ISO date-times (naive, as flattening leaves them), a fare, a tip missing in
    most rows, a boolean, a text category with missing values, and two repeated rows."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-03-02T00:00:00")
    busy_hours = np.r_[np.full(7, 1.0), np.full(17, 4.0)]  # daily and weekly cycles (2026-03-02: a Monday)
    busy_days = np.tile([3.0, 3, 3, 3, 3, 1, 1], 3)
    day = rng.choice(21, n, p=busy_days / busy_days.sum())
    hour = rng.choice(24, n, p=busy_hours / busy_hours.sum())
    epoch_ms = 1_772_409_600_000 + (day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, n)) * 1_000
    epoch_ms[: n // 4] -= epoch_ms[: n // 4] % 60_000  # whole minutes, the float-rounding corner
    pickup = start + pd.to_timedelta(rng.integers(0, 20 * 86_400, n), unit="s")
    dropoff = pickup + pd.to_timedelta(rng.integers(60, 3_600, n), unit="s")
    tip = np.where(rng.random(n) < 0.7, np.nan, rng.gamma(2.0, 1.5, n))
    table = pd.DataFrame(
        {
            "trip_id": np.arange(n) * 2 + 100,
            "payment_type": rng.choice([1, 2, 3, 4, 5], n, p=[0.6, 0.3, 0.07, 0.02, 0.01]),
            "time": epoch_ms,
            "pickup_datetime": pd.to_datetime(pickup.strftime("%Y-%m-%dT%H:%M:%S"), format="ISO8601"),
            "dropoff_datetime": pd.to_datetime(dropoff.strftime("%Y-%m-%dT%H:%M:%S"), format="ISO8601"),
            "fare": rng.gamma(3.0, 4.0, n).round(2),
            "tip": tip,
            "shared": rng.random(n) < 0.2,
            "zone": rng.choice(["north", "south", "east", None], n, p=[0.5, 0.3, 0.17, 0.03]),
        }
    )
    return pd.concat([table, table.iloc[[3, 7]]], ignore_index=True)


@requires_spark
@pytest.mark.parametrize("sample_rows", [None, 150], ids=["whole-table-sample", "150-row-sample"])
def test_spark_and_native_preprocessing_give_the_same_features(
    tmp_path, spark_session, monkeypatch, sample_rows
):
    """Spark's roles, plan, features and scaled values equal the native ones: with every row in the
    roles' sample, and with a sample of 150 rows corrected by whole-table aggregates."""
    if sample_rows:
        monkeypatch.setattr(spark_feature_rules, "SAMPLE_ROWS", sample_rows)
    table = parity_table()
    paths, config_path = write_run(tmp_path, table, {})
    config = load_config(config_path)
    native = preprocess(
        pd.read_parquet(paths.flattened),
        config.processing,
        time_column=config.report.time_column,
        random_state=config.modeling.random_state,
    )
    run_in_process(spark_session, "preprocess", paths.root, config_path)
    summary = json.loads(paths.summary.read_text())

    for key in ("features", "roles", "feature_plan", "columns_dropped", "scaling", "duplicates"):
        assert summary[key] == native.summary[key], key
    roles = summary["roles"]
    assert roles["payment_type"]["role"] == "categorical" and roles["shared"]["role"] == "boolean"
    assert roles["time"]["role"] == "timestamp" and roles["time"]["unit"] == "ms"
    assert roles["trip_id"] == {"role": "identifier", "reason": "integers stepping by a constant"}
    assert {"payment_type", "zone", "tip missing", "duration pickup_datetime → dropoff_datetime"} <= set(
        summary["features"]
    )
    assert {
        f"time {label} ({part})" for label in ("hour of day", "day of week") for part in ("sin", "cos")
    } <= set(summary["features"])

    kept, features, _ = spark_features(paths)
    assert np.array_equal(kept, native.rows)
    raw = FeaturePlan.from_dict(native.summary["feature_plan"]).transform(native.table)
    observed = np.isfinite(raw.to_numpy(dtype=float))  # imputed values come from each engine's centroids
    values = features.to_numpy()
    assert np.allclose(values[observed], native.features[observed], rtol=1e-12, atol=1e-12)
    assert not np.isnan(values).any()
