"""The Spark detect job at 100k rows: native <-> Spark parity, Isolation Forest and Bisecting KMeans on
Spark, label metrics; and bad input on the Spark path.

The job bodies run in the session's local SparkSession (``spark_session``, tests/integration/conftest.py)
with the arguments spark-submit passes them: spark-submit itself is tested in test_spark_jobs.py,
test_spark_cluster.py and tests/faults/test_spark_faults.py.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from spark_helpers import flagged_positions, java_available, run_in_process, spark_features, write_run

from anomaly_detection.config import load_config
from anomaly_detection.detect.detectors.centroids import kmeans
from anomaly_detection.detect.grid import DetectorSettings
from anomaly_detection.detect.scored import flagged_path, read_flagged, read_sample, sample_path
from anomaly_detection.features.preprocess import preprocess
from anomaly_detection.spark.jobs import preprocess as preprocess_job
from anomaly_detection.spark.submit import failure_cause, job_application_args

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not java_available(), reason="Java is not on PATH")]
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
def scored(tmp_path_factory, spark_session):
    table, planted = planted_table()
    grids = {
        "kmeans": {"simple": {"n_clusters": [K]}},
        "bisecting_kmeans": {"simple": {"n_clusters": [K]}},
        "isolation_forest": {"simple": {"n_estimators": [100], "max_samples": [256]}},
    }
    overrides = {
        "modeling": {
            "algorithms": ["isolation_forest", "kmeans", "bisecting_kmeans"],
            "grids": grids,
            "contamination": 0.01,
        },
        "evaluation": {"label_column": "label"},
    }
    paths, config_path = write_run(tmp_path_factory.mktemp("parity"), table, overrides)
    config = load_config(config_path)
    for job in ("preprocess", "detect"):
        run_in_process(spark_session, job, paths.root, config_path)
    return {"paths": paths, "config": config, "planted": planted}


def _results(paths, algorithm):
    return json.loads((paths.models / f"{algorithm}.json").read_text())


def test_spark_and_native_kmeans_flag_mostly_the_same_rows(scored):
    """The native pipeline's own preprocessing and KMeans against Spark's, on the same table."""
    paths, config = scored["paths"], scored["config"]
    spark_flagged = flagged_positions(paths, "kmeans")
    native_features = preprocess(
        pd.read_parquet(paths.flattened), config.processing, label_column="label", random_state=0
    )
    settings = DetectorSettings(
        contamination=config.modeling.contamination, random_state=config.modeling.random_state
    )
    native = kmeans(native_features.features, {"n_clusters": K}, settings)
    native_flagged = native_features.rows[native.labels == 1]
    top = len(native_flagged)
    assert abs(len(spark_flagged) - top) <= max(2, int(1e-3 * ROWS))  # approxQuantile's error bound
    agreement = len(np.intersect1d(native_flagged, spark_flagged)) / top
    print(f"\nnative vs Spark KMeans k={K}: top-{top} agreement {agreement:.1%}")
    assert agreement >= 0.9
    assert set(scored["planted"]) <= set(native_flagged) and set(scored["planted"]) <= set(spark_flagged)


@pytest.mark.parametrize("algorithm", ["isolation_forest", "kmeans", "bisecting_kmeans"])
def test_each_spark_detector_reports_label_metrics_and_finds_the_planted_rows(scored, algorithm):
    paths = scored["paths"]
    (result,) = _results(paths, algorithm)
    assert result["info"]["engine"] == "spark" and result["algorithm"] == algorithm
    assert result["roc_auc"] > 0.95 and result["pr_auc"] > 0.5 and result["recall"] > 0.9
    assert (
        result["silhouette"] is not None and result["davies_bouldin"] > 0 and result["calinski_harabasz"] > 0
    )
    assert result["anomaly_count"] == pytest.approx(0.01 * ROWS, abs=max(2, 1e-3 * ROWS))
    flagged = read_flagged(flagged_path(paths.models, algorithm))
    assert len(flagged) == result["anomaly_count"] and (flagged["score"] > result["threshold"]).all()
    # the report sample is bounded: plot_sample_size random rows plus the top list
    sample = read_sample(sample_path(paths.models, algorithm))
    report = scored["config"].report
    assert report.plot_sample_size <= len(sample) <= report.plot_sample_size + report.top_anomalies
    assert sample["sampled"].sum() == report.plot_sample_size
    assert set(flagged["position"][: report.top_anomalies]) <= set(sample["position"])
    assert sample.loc[sample["anomaly"] == 0, "score"].max() <= result["threshold"]
    if algorithm == "isolation_forest":
        assert result["info"]["fit_rows"] <= scored["config"].spark.sample_size


def test_spark_and_native_internal_metrics_match_on_the_same_split(scored):
    """Davies-Bouldin and Calinski-Harabasz from Spark's group sums equal scikit-learn's on the driver."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    paths = scored["paths"]
    (result,) = _results(paths, "kmeans")
    kept, features, _ = spark_features(paths)
    X = features.to_numpy()
    labels = np.isin(kept, flagged_positions(paths, "kmeans")).astype(int)
    assert result["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, labels), rel=1e-6)
    assert result["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-6)


def _run_preprocess(tmp_path, table, spark, capsys):
    """The preprocess job's exit status and stderr (what spark-submit would pass on)."""
    paths, config_path = write_run(tmp_path, table, {})
    capsys.readouterr()
    code = preprocess_job.main(job_application_args(paths.root, config_path), spark=spark)
    return paths, code, capsys.readouterr().err


def test_a_table_of_one_repeated_row_fails_with_the_cause(tmp_path, spark_session, capsys):
    table = pd.DataFrame({"a": [1.0] * 50, "b": [2.0] * 50})  # no row dropped: every column is constant
    paths, code, stderr = _run_preprocess(tmp_path, table, spark_session, capsys)
    assert code != 0
    cause = failure_cause(stderr)
    assert cause.startswith("DataError: no usable numeric feature"), cause
    assert not paths.spark_features.exists()


def test_a_column_entirely_null_is_dropped_with_its_reason(tmp_path, spark_session, capsys):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "empty": np.nan})
    paths, code, stderr = _run_preprocess(tmp_path, table, spark_session, capsys)
    assert code == 0, stderr
    summary = json.loads(paths.summary.read_text())
    assert summary["features"] == ["a", "b"]
    assert "empty" in summary["columns_dropped"]
    assert "empty" in paths.log.read_text()


def test_contamination_auto_is_the_native_mixture_cut_on_spark(tmp_path, spark_session):
    """At 20,000 rows the mixture is fitted on every score, in position order, and the forest on every
    row: the cut, its words and the rows flagged are the native ones."""
    from anomaly_detection.detect.detectors.isolation_forest import isolation_forest
    from anomaly_detection.detect.threshold import cut_scores

    table, planted = planted_table(n=20_000, seed=3)
    params = {"n_estimators": 100, "max_samples": 256}
    overrides = {
        "modeling": {"algorithms": ["isolation_forest"], "contamination": "auto",
                     "grids": {"isolation_forest": {"simple": {k: [v] for k, v in params.items()}}}},
        "evaluation": {"label_column": "label"},
    }  # fmt: skip
    paths, config_path = write_run(tmp_path, table, overrides)
    for job in ("preprocess", "detect"):
        run_in_process(spark_session, job, paths.root, config_path)
    (result,) = _results(paths, "isolation_forest")
    kept, features, _ = spark_features(paths)
    seed = load_config(config_path).modeling.random_state
    native = isolation_forest(features.to_numpy(), params, DetectorSettings(random_state=seed))
    cut = cut_scores(native.scores, "auto", seed=seed)
    assert result["info"]["threshold_rule"] == cut.basis
    flagged = set(flagged_positions(paths, "isolation_forest"))
    assert flagged == set(kept[cut.labels == 1])
    assert len(flagged) < 0.1 * len(table)  # a tail, not a fixed share
    assert len(set(planted) & flagged) >= 0.9 * len(planted)
