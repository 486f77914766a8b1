"""The Spark detect job at 100k rows, through spark-submit in local mode: native <-> Spark parity,
Isolation Forest and Bisecting KMeans on Spark, label metrics; and bad input on the Spark path."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from anomaly_detection.config import load_config
from anomaly_detection.detect import DetectorSettings, kmeans
from anomaly_detection.pipeline import preprocess_stage
from anomaly_detection.spark_submit import failure_cause, run_spark_job, spark_env, spark_submit_command
from spark_helpers import JOB_TIMEOUT, QUICK_JVM, java_available, write_run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not java_available(), reason="Java is not on PATH")]
MASTER = "local[2]"
ROWS = 100_000
PLANTED = 300
K = 5


def planted_table(n: int = ROWS, seed: int = 11) -> tuple[pd.DataFrame, np.ndarray]:
    """Five clusters in 8 numeric columns; ``PLANTED`` rows far from every cluster; a 0/1 label."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 10, (K, 8))
    X = centers[rng.integers(0, K, n)] + rng.normal(0, 0.5, (n, 8))
    planted = np.sort(rng.choice(n, PLANTED, replace=False))
    X[planted] = rng.uniform(-15, 25, (PLANTED, 8))
    table = pd.DataFrame(X, columns=[f"m{i}" for i in range(8)])
    table["label"] = np.isin(np.arange(n), planted).astype(np.int64)
    return table, planted


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    table, planted = planted_table()
    grids = {
        "kmeans": {"simple": {"n_clusters": [K]}},
        "bisecting_kmeans": {"simple": {"n_clusters": [K]}},
        "isolation_forest": {"simple": {"n_estimators": [100], "max_samples": [256]}},
    }
    overrides = {
        "modeling": {"algorithms": ["isolation_forest", "kmeans", "bisecting_kmeans"], "grids": grids, "contamination": 0.01},
        "evaluation": {"label_column": "label"},
    }
    paths, config_path = write_run(tmp_path_factory.mktemp("parity"), table, overrides)
    config = load_config(config_path)
    preprocess_stage(config, paths)  # the native features: both engines see the same matrix
    run_spark_job("detect", paths.root, config_path, master=MASTER, conf=QUICK_JVM, timeout=JOB_TIMEOUT * 2)
    return {"paths": paths, "config": config, "planted": planted}


def _results(paths, algorithm):
    return json.loads((paths.models / f"{algorithm}.json").read_text())


def test_spark_and_native_kmeans_flag_mostly_the_same_rows(scored):
    paths, config = scored["paths"], scored["config"]
    spark_labels = np.load(paths.models / "kmeans.labels.npy")
    X = pd.read_parquet(paths.features).to_numpy()
    settings = DetectorSettings(contamination=config.modeling.contamination, random_state=config.modeling.random_state)
    native = kmeans(X, {"n_clusters": K}, settings)
    top = int(native.labels.sum())
    assert abs(int(spark_labels.sum()) - top) <= max(2, int(1e-3 * ROWS))  # approxQuantile's error bound
    agreement = (native.labels.astype(bool) & spark_labels.astype(bool)).sum() / top
    print(f"\nnative vs Spark KMeans k={K}: top-{top} agreement {agreement:.1%}")
    assert agreement >= 0.9
    kept = np.load(paths.kept_rows)
    planted = np.searchsorted(kept, scored["planted"])
    assert native.labels[planted].all() and spark_labels[planted].all()


@pytest.mark.parametrize("algorithm", ["isolation_forest", "kmeans", "bisecting_kmeans"])
def test_each_spark_detector_reports_label_metrics_and_finds_the_planted_rows(scored, algorithm):
    paths = scored["paths"]
    (result,) = _results(paths, algorithm)
    assert result["info"]["engine"] == "spark" and result["algorithm"] == algorithm
    assert result["roc_auc"] > 0.95 and result["pr_auc"] > 0.5 and result["recall"] > 0.9
    assert result["silhouette"] is not None and result["davies_bouldin"] > 0 and result["calinski_harabasz"] > 0
    assert result["anomaly_count"] == pytest.approx(0.01 * ROWS, abs=max(2, 1e-3 * ROWS))
    scores = np.load(paths.models / f"{algorithm}.scores.npy")
    labels = np.load(paths.models / f"{algorithm}.labels.npy")
    assert scores.shape == labels.shape == (ROWS,) and labels.sum() == result["anomaly_count"]
    assert scores[labels == 0].max() <= result["threshold"] < scores[labels == 1].min()
    if algorithm == "isolation_forest":
        assert result["info"]["fit_rows"] <= scored["config"].spark.sample_size


def test_spark_and_native_internal_metrics_match_on_the_same_split(scored):
    """Davies-Bouldin and Calinski-Harabasz from Spark's group sums equal scikit-learn's on the driver."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    paths = scored["paths"]
    (result,) = _results(paths, "kmeans")
    X = pd.read_parquet(paths.features).to_numpy()
    labels = np.load(paths.models / "kmeans.labels.npy")
    assert result["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, labels), rel=1e-6)
    assert result["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-6)


def _run_preprocess(tmp_path, table):
    paths, config_path = write_run(tmp_path, table, {})
    command = spark_submit_command("preprocess", paths.root, config_path, master=MASTER, conf=QUICK_JVM)
    done = subprocess.run(command, capture_output=True, text=True, env=spark_env(MASTER), timeout=JOB_TIMEOUT)
    return paths, done


def test_all_rows_duplicates_fail_with_the_cause(tmp_path):
    table = pd.DataFrame({"a": [1.0] * 50, "b": [2.0] * 50})
    paths, done = _run_preprocess(tmp_path, table)
    assert done.returncode != 0
    cause = failure_cause(done.stderr)
    assert cause.startswith("DataError: need at least") and "49 duplicate" in cause, cause
    assert not paths.features.exists()


def test_a_column_entirely_null_is_dropped_with_its_reason(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "empty": np.nan})
    paths, done = _run_preprocess(tmp_path, table)
    assert done.returncode == 0, done.stderr
    summary = json.loads(paths.summary.read_text())
    assert summary["features"] == ["a", "b"]
    assert "empty" in summary["columns_dropped"]
    assert "empty" in paths.log.read_text()
