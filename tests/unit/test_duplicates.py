"""Every ingested row is scored and counted: repeated records are detected, never removed (issue 14)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from anomaly_detection.config import build_config
from anomaly_detection.detect.distinct import broadcast, distinct_rows
from anomaly_detection.detect.grid import REGISTRY, DetectorSettings, run_grid, top_share_labels
from anomaly_detection.errors import ConfigError
from anomaly_detection.pipeline.stages import detect_stage, preprocess_stage, select_stage
from anomaly_detection.runs import RunPaths

COPIES, NORMAL = 30, 3000


def normal_rows_with_repeated_anomaly(seed=0):
    """3,000 normal rows in [0.3, 0.7] and 30 copies of one absurd record, spread among them."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.3, 0.7, size=(NORMAL + COPIES, 4))
    copies = rng.choice(len(X), COPIES, replace=False)
    X[copies] = [1.0, 0.0, 1.0, 0.0]
    return X, np.sort(copies)


def test_distinct_rows_maps_every_row_back_to_its_first_occurrence():
    X = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0], [3.0, 4.0]])
    first, inverse = distinct_rows(X)
    assert first.tolist() == [0, 1, 3]
    assert np.array_equal(X[first][inverse], X)


def test_broadcast_gives_every_copy_its_distinct_rows_score_and_label():
    X, copies = normal_rows_with_repeated_anomaly()
    first, inverse = distinct_rows(X)
    detection = REGISTRY["dbscan"].detect(
        X[first], {"eps_quantile": 0.95, "min_samples": 10}, DetectorSettings()
    )
    rows = broadcast(detection, inverse)
    assert rows.scores.shape == rows.labels.shape == (len(X),)
    assert len(set(rows.scores[copies])) == 1 and rows.labels[copies].all()
    assert rows.info["distinct_rows"] == len(first) == NORMAL + 1


def test_contamination_counts_rows_and_flags_ties_together():
    scores = np.r_[np.full(30, 9.0), np.arange(970, dtype=float) / 1000]
    labels, threshold = top_share_labels(scores, 0.01)  # 10 rows, but 30 tie at the top
    assert labels[:30].all() and labels.sum() == 30 and threshold == 9.0
    labels, _ = top_share_labels(scores, 0.05)
    assert labels.sum() == 50 and labels[:30].all()


def test_ties_filling_more_than_half_the_rows_flag_only_the_rows_above():
    scores = np.r_[np.zeros(900), np.arange(1, 101, dtype=float)]
    labels, threshold = top_share_labels(scores, 0.2)
    assert labels.sum() == 100 and threshold == 1.0


@pytest.mark.parametrize(
    "algorithm", ["ensemble", "isolation_forest", "kmeans", "knn", "local_outlier_factor"]
)
def test_every_copy_of_a_repeated_anomaly_is_flagged(algorithm):
    X, copies = normal_rows_with_repeated_anomaly()
    settings = DetectorSettings(contamination=0.05, random_state=0)
    for detection in run_grid(algorithm, REGISTRY[algorithm].grids["simple"], X, settings):
        assert detection.scores.shape == (len(X),)
        assert detection.labels[copies].all(), detection.params
        # the share counts rows (copies included), ties at the cut flagged together
        assert detection.labels.sum() == math.ceil(0.05 * len(X))


def test_fitting_on_every_copy_lets_a_repeated_anomaly_mask_itself():
    X, copies = normal_rows_with_repeated_anomaly()
    settings = DetectorSettings(contamination=0.05, random_state=0)
    grid = {"n_neighbors": [10]}
    masked = next(run_grid("knn", grid, X, settings, fit_on_distinct=False))
    distinct = next(run_grid("knn", grid, X, settings))
    assert not masked.labels[copies].any() and distinct.labels[copies].all()


def test_the_old_drop_duplicates_key_names_its_replacement():
    with pytest.raises(ConfigError, match="fit_on_distinct_rows"):
        build_config({"source": {"url": "http://127.0.0.1:1/r"}, "processing": {"drop_duplicates": True}})


def test_a_native_run_scores_lists_and_counts_every_copy(tmp_path):
    X, copies = normal_rows_with_repeated_anomaly()
    table = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    config = build_config({"source": {"url": "http://127.0.0.1:1/r"}, "processing": {"mode": "native"}})
    paths = RunPaths.create(tmp_path / "runs", tmp_path / "reports", "dups")
    table.to_parquet(paths.flattened, index=False)
    preprocess_stage(config, paths)
    for algorithm in config.modeling.algorithms:
        detect_stage(config, paths, algorithm)
    select_stage(config, paths)
    results = json.loads(paths.results.read_text())
    assert results["best"]["algorithm"] == "ensemble"
    rows = results["rows"]
    assert rows["ingested"] == rows["scored"] == len(X)
    assert rows["duplicates"] == COPIES - 1 and rows["duplicates_flagged"] == COPIES - 1
    anomalies = pd.read_csv(paths.anomalies)
    assert len(anomalies) == results["best"]["anomaly_count"]
    repeated = (anomalies[["a", "b", "c", "d"]] == [1.0, 0.0, 1.0, 0.0]).all(axis=1)
    assert repeated.sum() == COPIES and anomalies["rank"][repeated].tolist() == list(range(1, COPIES + 1))
