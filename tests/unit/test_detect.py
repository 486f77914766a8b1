import numpy as np
import pytest

from anomaly_detection.detect.evaluate import evaluate
from anomaly_detection.detect.grid import DETECTORS, REGISTRY, DetectorSettings, run_grid, top_share_labels
from anomaly_detection.detect.threshold import cut_scores


def blobs_with_outliers(n=600, d=4, outliers=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.2, 0.8, size=(3, d))
    X = centers[rng.integers(0, 3, n)] + rng.normal(0, 0.02, size=(n, d))
    idx = rng.choice(n, outliers, replace=False)
    X[idx] = rng.uniform(0, 1, size=(outliers, d)) * np.where(
        rng.random((outliers, d)) < 0.5, 0.05, 1.0
    ) + 0.95 * (rng.random((outliers, d)) < 0.5)
    y = np.zeros(n, dtype=np.int8)
    y[idx] = 1
    return np.clip(X, 0, 2), y


PARAMS = {
    "isolation_forest": {"n_estimators": 100, "max_samples": 256},
    "kmeans": {"n_clusters": 3},
    "bisecting_kmeans": {"n_clusters": 3},
    "dbscan": {"eps_quantile": 0.95, "min_samples": 10},
    "knn": {"n_neighbors": 10},
    "local_outlier_factor": {"n_neighbors": 20},
    "ensemble": {"n_neighbors": 10},
    "ecod": {},
    "hbos": {"n_bins": 10},
}


@pytest.mark.parametrize("algorithm", sorted(a for a in DETECTORS if not REGISTRY[a].uses_context))
def test_every_detector_scores_every_row_and_finds_planted_outliers(algorithm):
    X, y = blobs_with_outliers()
    settings = DetectorSettings(contamination=0.05, random_state=0)
    det = DETECTORS[algorithm](X, PARAMS[algorithm], settings)
    assert det.scores.shape == (len(X),) and np.isfinite(det.scores).all()
    assert det.labels.shape == (len(X),) and set(np.unique(det.labels)) <= {0, 1}
    # the planted outliers rank highest
    top = np.argsort(-det.scores)[: y.sum()]
    assert y[top].mean() >= 0.75
    # the labels agree with the threshold
    assert (det.scores[det.labels == 1] >= det.threshold).all()


@pytest.mark.parametrize("algorithm", sorted(a for a in DETECTORS if not REGISTRY[a].uses_context))
def test_detectors_are_deterministic_for_a_seed(algorithm):
    X, _ = blobs_with_outliers(seed=1)
    a = DETECTORS[algorithm](X, PARAMS[algorithm], DetectorSettings(random_state=7))
    b = DETECTORS[algorithm](X, PARAMS[algorithm], DetectorSettings(random_state=7))
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)


def test_contamination_sets_the_anomaly_count():
    scores = np.arange(1000, dtype=float)
    labels, threshold = top_share_labels(scores, 0.05)
    assert labels.sum() == 50 and threshold == 950.0
    assert labels[950:].all() and not labels[:950].any()


def test_dbscan_fits_on_a_bounded_sample_but_scores_all_rows():
    X, _ = blobs_with_outliers(n=5000)
    det = DETECTORS["dbscan"](X, PARAMS["dbscan"], DetectorSettings(dbscan_sample_size=500))
    assert det.info["fit_rows"] == 500
    assert det.scores.shape == (5000,)
    assert ((det.scores > det.info["eps"]) == det.labels.astype(bool)).all()


def test_dbscan_with_tiny_eps_is_flagged_degenerate():
    X, _ = blobs_with_outliers(n=300)
    det = DETECTORS["dbscan"](X, {"eps": 1e-9, "min_samples": 5}, DetectorSettings())
    result = evaluate(X, det, metric="silhouette")
    assert any(f.startswith("degenerate") for f in result.flags)
    assert not result.selectable


def test_kmeans_fits_on_sample():
    X, _ = blobs_with_outliers(n=3000)
    det = DETECTORS["kmeans"](X, {"n_clusters": 3}, DetectorSettings(fit_sample_size=1000))
    assert det.info["fit_rows"] == 1000 and det.scores.shape == (3000,)


def test_run_grid_yields_one_detection_per_grid_point():
    X, _ = blobs_with_outliers(n=300)
    out = list(run_grid("kmeans", {"n_clusters": [2, 3, 4]}, X, DetectorSettings()))
    assert [d.params["n_clusters"] for d in out] == [2, 3, 4]


def test_settings_validate_contamination():
    with pytest.raises(ValueError, match="contamination"):
        DetectorSettings(contamination=0.7)


@pytest.mark.parametrize("algorithm", ["knn", "local_outlier_factor"])
def test_neighbour_detectors_score_rows_outside_the_fit_sample_like_rows_inside(algorithm):
    X, y = blobs_with_outliers(n=3000, outliers=30)
    full = DETECTORS[algorithm](X, PARAMS[algorithm], DetectorSettings(fit_sample_size=100_000))
    sampled = DETECTORS[algorithm](X, PARAMS[algorithm], DetectorSettings(fit_sample_size=1000))
    assert sampled.info["fit_rows"] == 1000 and full.info["fit_rows"] == 3000
    for det in (full, sampled):
        top = np.argsort(-det.scores)[: y.sum()]
        assert y[top].mean() >= 0.75
    # the scores of a sample fit rank the rows like the full fit
    from scipy.stats import spearmanr

    assert spearmanr(full.scores, sampled.scores)[0] > 0.8


def test_contamination_auto_flags_the_far_tail_and_stays_within_its_caps():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 2000), rng.normal(12, 1, 20)]  # 20 far in the tail
    labels, threshold = top_share_labels(scores, "auto")
    assert labels[-20:].all() and labels[:-20].sum() <= 2
    assert (scores[labels == 1] >= threshold).all()
    # half the rows in an upper group: capped at MAX_SHARE of the rows
    bimodal = np.r_[rng.normal(0, 1, 1000), rng.normal(10, 1, 1000)]
    cut = cut_scores(bimodal, "auto")
    assert cut.labels.sum() == 400 and "capped at 20 %" in cut.basis
    # one extreme row in 2,000: raised to the floor, MIN_SHARE of the rows
    cut = cut_scores(np.r_[rng.normal(0, 1, 1999), 30.0], "auto")
    assert cut.labels.sum() == 10 and cut.labels[-1] == 1 and "floor" in cut.basis
    # a fixed share says so
    assert cut_scores(scores, 0.05).basis == "a fixed 5 % of rows (modeling.contamination)"
    with pytest.raises(ValueError, match="'auto' or in"):
        DetectorSettings(contamination="sometimes")
    assert DetectorSettings(contamination="auto").contamination == "auto"


def test_ensemble_finds_global_and_local_outliers_and_is_deterministic():
    rng = np.random.default_rng(3)
    dense = rng.normal(0.3, 0.01, size=(500, 2))  # a tight cluster
    loose = rng.normal(0.7, 0.08, size=(500, 2))  # a wide one
    local = np.array([[0.5, 0.5], [0.45, 0.55]])  # between the clusters, inside the data's range
    far = np.array([[0.0, 1.0], [1.0, 0.0]])  # far from everything
    X = np.vstack([dense, loose, local, far])
    settings = DetectorSettings(contamination=0.01, random_state=5)
    a = DETECTORS["ensemble"](X, {"n_neighbors": 10}, settings)
    b = DETECTORS["ensemble"](X, {"n_neighbors": 10}, settings)
    np.testing.assert_array_equal(a.scores, b.scores)
    top = set(np.argsort(-a.scores)[:10])
    assert {1000, 1001, 1002, 1003} <= top
    assert -1 <= a.info["member_agreement"] <= 1 and len(a.info["members"]) == 3
