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
import pyarrow as pa
import pyarrow.parquet as pq
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
from anomaly_detection.features.derive import FeaturePlan, feature_plan, to_instants
from anomaly_detection.features.preprocess import find_duplicate_rows, preprocess
from anomaly_detection.ingest.flatten import FlattenStats, finalize_frame, flatten_records
from anomaly_detection.ingest.parquet import PartWriter, typed_batches
from anomaly_detection.pipeline import timeview
from anomaly_detection.pipeline.stages import report_stage, select_stage
from anomaly_detection.runs import spark_jobs_dir
from anomaly_detection.spark.jobs import features as spark_feature_rules
from anomaly_detection.spark.jobs.common import POS, pandas_dtypes, read_positioned
from anomaly_detection.spark.jobs.text_columns import convert_text_columns
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
def spark_run(spark_reference, tmp_path_factory):
    """The reference run's outputs, its config and input, and the native preprocessing of that input
    (its summary with the native ``time_context``, as ``preprocess_stage`` adds it)."""
    paths = spark_reference.paths
    config = load_config(spark_reference.config_path)
    native = preprocess(
        pd.read_parquet(paths.flattened),
        config.processing,
        label_column=config.evaluation.label_column,
        random_state=config.modeling.random_state,
    )
    measures = [s.column for s in feature_plan(native.summary).specs if s.kind == "measure"]
    native.summary["time_context"] = timeview.write_context(
        config, tmp_path_factory.mktemp("native_context"), native.table, measures
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
        time_column=config.time.column,
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


def socrata_records(n: int = 600, seed: int = 11) -> list[dict[str, str]]:
    """Taxi trips as a Socrata API sends them: every value a string (``"trip_distance": "1.50"``,
    ``"tpep_pickup_datetime": "2019-01-07T00:46:40.000"``), an empty tip in most trips, an ``extra``
    key missing from some records, a text flag, and two repeated records."""
    rng = np.random.default_rng(seed)
    busy_hours = np.r_[np.full(7, 1.0), np.full(17, 4.0)]
    busy_days = np.tile([3.0, 3, 3, 3, 3, 1, 1], 3)
    day = rng.choice(21, n, p=busy_days / busy_days.sum())
    hour = rng.choice(24, n, p=busy_hours / busy_hours.sum())
    seconds = day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, n)
    pickup = pd.Timestamp("2019-01-07T00:00:00") + pd.to_timedelta(seconds, unit="s")  # a Monday
    dropoff = pickup + pd.to_timedelta(rng.integers(60, 3_600, n), unit="s")
    distance = rng.gamma(2.0, 1.2, n)
    fare = 2.5 + 2.5 * distance + rng.gamma(2.0, 0.5, n)
    records = []
    for i in range(n):
        record = {
            "VendorID": str(rng.choice([1, 2])),
            "tpep_pickup_datetime": pickup[i].strftime("%Y-%m-%dT%H:%M:%S.000"),
            "tpep_dropoff_datetime": dropoff[i].strftime("%Y-%m-%dT%H:%M:%S.000"),
            "passenger_count": str(rng.choice([1, 1, 1, 2, 3, 5])),
            "trip_distance": f"{distance[i]:.2f}",
            "payment_type": str(rng.choice([1, 2, 3, 4], p=[0.6, 0.35, 0.04, 0.01])),
            "fare_amount": f"{fare[i]:.2f}",
            "tip_amount": f"{rng.gamma(2.0, 1.0):.2f}" if rng.random() < 0.3 else "",
            "store_and_fwd_flag": "Y" if rng.random() < 0.05 else "N",
        }
        if rng.random() < 0.8:
            record["extra"] = str(rng.choice(["0", "0.5", "1"]))
        records.append(record)
    return records + [records[3], records[7]]


@requires_spark
def test_spark_types_numeric_and_iso_text_as_the_native_flattening(tmp_path, spark_session):
    """Bulk ingestion keeps a Socrata API's strings as strings; the Spark preprocessing converts the
    numeric and ISO date-time text as ``finalize_frame`` does, so both engines see the same measures,
    codes and timestamps, and give the same roles, plan and features."""
    records = socrata_records()
    flat = flatten_records(records, max_depth=10, stats=FlattenStats())
    table, notes = finalize_frame(flat, max_list_length=5)
    assert {"trip_distance", "payment_type", "tip_amount", "extra"} <= set(notes.numeric_from_text)
    assert set(notes.datetimes) == {"tpep_pickup_datetime", "tpep_dropoff_datetime"}
    paths, config_path = write_run(tmp_path, table, {})
    config = load_config(config_path)
    native = preprocess(
        table,
        config.processing,
        time_column=config.time.column,
        random_state=config.modeling.random_state,
    )
    paths.flattened.unlink()  # the Spark path's flattened.parquet: bulk ingestion's part files, all text
    paths.flattened.mkdir()
    writer = PartWriter(paths.flattened)
    for batch in typed_batches(iter([(1, "u", records[:300]), (2, "u", records[300:])]), 10, 300):
        writer.write(batch)
    writer.finish()
    assert set(writer.columns.values()) == {"string"}

    run_in_process(spark_session, "preprocess", paths.root, config_path)
    summary = json.loads(paths.summary.read_text())
    for key in ("features", "roles", "feature_plan", "columns_dropped", "scaling", "duplicates", "dtypes"):
        assert summary[key] == native.summary[key], key
    roles = summary["roles"]
    assert roles["payment_type"]["role"] == "categorical" and roles["trip_distance"]["role"] == "measure"
    assert roles["tpep_pickup_datetime"]["role"] == "timestamp"
    assert summary["dtypes"]["payment_type"] == "int64" and summary["dtypes"]["tip_amount"] == "float64"
    assert {"tip_amount missing", "duration tpep_pickup_datetime → tpep_dropoff_datetime"} <= set(
        summary["features"]
    )
    assert "tpep_pickup_datetime hour of day (sin)" in summary["features"]

    kept, features, _ = spark_features(paths)
    assert np.array_equal(kept, native.rows)
    raw = FeaturePlan.from_dict(native.summary["feature_plan"]).transform(native.table)
    observed = np.isfinite(raw.to_numpy(dtype=float))
    assert np.allclose(features.to_numpy()[observed], native.features[observed], rtol=1e-12, atol=1e-12)


#: Text columns (4 values each) and what the native flattening makes of them: numbers, ISO
#: date-times with and without zones, text it leaves alone, and whitespace it reads as missing.
TEXT_CASES = {
    "ints": ["1", "+2", "-0", "00012"],
    "ints_empty": ["1", "2", "", " 3 "],
    "floats": ["1.50", "1e5", ".5", "-Infinity"],
    "nan_text": ["nan", "1", "2", "3"],
    "java_double": ["1.5d", "0x1p3", "2", "3"],
    "naive": ["2019-01-01T00:46:40.000", "2019-01-01 01:00:00", "2019-01-03", None],
    "one_offset": ["2019-01-01T00:46:40-05:00", "2019-01-01T01:00:00-0500", "2019-01-01T00:46-05:00", ""],
    "utc": ["2019-01-01T00:46:40Z", "2019-01-01T01:00:00Z", "2019-01-01T01:00:00+00:00", "2019-01-01T01:00Z"],
    "mixed": ["2019-01-01T00:46:40-05:00", "2019-01-01T01:00:00+01:00", "2019-01-01T02:00", "2019-01-02"],
    "bad_day": ["2019-02-30T00:00:00", "2019-01-01T00:00:00", "2019-01-01", "2019-01-02"],
    "hour_only_zone": ["2019-01-01T00:46:40+05", "2019-01-01T00:46:40+05", "2019-01-02", "2019-01-03"],
    "empty": ["", " ", None, ""],
    "padded": ["\u00a01.5", "\x1c2\x1f", "3\n", "\t4"],
    "padded_dates": ["\u00a02019-01-01", "2019-01-02 ", "2019-01-03T00:00\n", "\t2019-01-04"],
}


@requires_spark
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")
def test_text_columns_follow_the_native_conversion(tmp_path, spark_session):
    frame = pd.DataFrame(TEXT_CASES)
    native, _ = finalize_frame(frame, max_list_length=5)
    path = tmp_path / "flattened.parquet"
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in TEXT_CASES.items()}), path)
    names = list(TEXT_CASES)
    col = {name: f"c{i}" for i, name in enumerate(names)}
    table = read_positioned(spark_session, path, names)
    table, dtypes, conversions = convert_text_columns(table, col, pandas_dtypes(path))
    assert {n: str(d) for n, d in dtypes.items()} == {n: str(native[n].dtype) for n in names}
    assert {n: c.kind for n, c in conversions.items()} == {
        "ints": "int",
        "ints_empty": "float",
        "floats": "float",
        "naive": "naive",
        "one_offset": "offset",
        "utc": "offset",
        "mixed": "utc",
        "padded": "float",
        "padded_dates": "naive",
    }
    spark = table.orderBy(POS).toPandas()
    for name, conversion in conversions.items():
        values = spark[col[name]]
        if conversion.numeric:
            assert values.astype(float).tolist() == pytest.approx(
                native[name].astype(float).tolist(), nan_ok=True
            )
        else:  # the instants the features are computed from: derive.to_instants of the native values
            expected = to_instants(native[name], None).astype("datetime64[us, UTC]")
            observed = pd.to_datetime(values).dt.tz_localize("UTC").astype("datetime64[us, UTC]")
            assert observed.isna().tolist() == expected.isna().tolist(), name
            assert (observed == expected)[expected.notna()].all(), name
