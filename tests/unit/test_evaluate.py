import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from anomaly_detection.detect.evaluate import (
    ModelResult,
    evaluate,
    internal_metrics,
    select_best,
    two_group_silhouette,
)
from anomaly_detection.detect.grid import Detection


def _detection(scores, labels, algorithm="kmeans", params=None, info=None):
    return Detection(
        algorithm,
        params or {"n_clusters": 3},
        np.asarray(scores, float),
        np.asarray(labels, np.int8),
        0.5,
        0.1,
        info or {"n_clusters": 3},
    )


def _result(score, metric="silhouette", flags=(), algorithm="kmeans"):
    return ModelResult(algorithm, {}, metric, score, None, None, None, 1, 0.1, 0.0, 0.0, list(flags))


def test_internal_metrics_reward_a_clean_split():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.05, (200, 2)), rng.normal(1, 0.05, (10, 2))])
    good = np.r_[np.zeros(200), np.ones(10)].astype(np.int8)
    bad = rng.permutation(good)
    m_good = internal_metrics(X, good, sample_size=100, random_state=0)
    m_bad = internal_metrics(X, bad, sample_size=100, random_state=0)
    assert m_good["silhouette"] > 0.8 > m_bad["silhouette"]
    assert m_good["davies_bouldin"] < m_bad["davies_bouldin"]
    assert m_good["calinski_harabasz"] > m_bad["calinski_harabasz"]


def test_sampled_silhouette_keeps_rare_anomalies():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.05, (20000, 2)), rng.normal(1, 0.05, (3, 2))])
    labels = np.r_[np.zeros(20000), np.ones(3)].astype(np.int8)
    m = internal_metrics(X, labels, sample_size=500, random_state=0)
    assert m["silhouette"] is not None and m["silhouette"] > 0.5


def test_one_group_gives_no_metrics_and_a_flag():
    X = np.random.default_rng(0).random((50, 2))
    result = evaluate(X, _detection(np.zeros(50), np.zeros(50)), metric="silhouette")
    assert result.score is None and result.silhouette is None
    assert "anomaly share is 0%" in result.flags
    assert any(f.startswith("degenerate") for f in result.flags)


def test_share_above_half_is_flagged():
    X = np.random.default_rng(0).random((10, 2))
    labels = [1] * 6 + [0] * 4
    result = evaluate(X, _detection(np.arange(10), labels), metric="silhouette")
    assert any("above 50%" in f for f in result.flags)


def test_label_metrics_use_the_continuous_score():
    X = np.random.default_rng(0).random((100, 2))
    y = np.r_[np.zeros(90), np.ones(10)].astype(np.int8)
    scores = np.r_[np.linspace(0, 1, 90), np.linspace(2, 3, 10)]
    labels = (scores > 2.5).astype(np.int8)  # half the true anomalies labelled
    r = evaluate(X, _detection(scores, labels), metric="silhouette", y_true=y)
    assert r.roc_auc == pytest.approx(1.0) and r.pr_auc == pytest.approx(1.0)
    assert r.precision == pytest.approx(1.0) and r.recall == pytest.approx(0.5)
    assert r.f1 == pytest.approx(2 / 3)


def test_selection_direction_per_metric():
    assert select_best([_result(0.2), _result(0.7), _result(0.5)]).score == 0.7
    assert select_best([_result(0.9, "davies_bouldin"), _result(0.3, "davies_bouldin")]).score == 0.3
    assert select_best([_result(10.0, "calinski_harabasz"), _result(50.0, "calinski_harabasz")]).score == 50.0


def test_selection_prefers_sane_models():
    flawed = _result(0.99, flags=["degenerate: no core points: every row is noise"])
    assert select_best([flawed, _result(0.1), _result(None)]).score == 0.1
    assert select_best([flawed]).score == 0.99  # still returns something


@pytest.mark.parametrize("n, d, share", [(50, 2, 0.1), (700, 5, 0.3), (1500, 14, 0.02)])
def test_fast_silhouette_matches_scikit_learn(n, d, share):
    rng = np.random.default_rng(n)
    X = rng.random((n, d))
    labels = (rng.random(n) < share).astype(np.int8)
    labels[:2] = [0, 1]
    X[labels == 1] += 0.3
    assert two_group_silhouette(X, labels, chunk_rows=128) == pytest.approx(
        silhouette_score(X, labels), abs=1e-9
    )


def test_fast_silhouette_single_member_group_scores_zero_for_it():
    X = np.array([[0.0], [0.1], [0.2], [5.0]])
    labels = np.array([0, 0, 0, 1])
    assert two_group_silhouette(X, labels) == pytest.approx(silhouette_score(X, labels))


def test_split_metrics_from_aggregates_equal_sklearn():
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from anomaly_detection.detect.evaluate import split_metrics_from_aggregates

    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(0, 1, (400, 4)), rng.normal(4, 2, (25, 4))])
    labels = np.r_[np.zeros(400, int), np.ones(25, int)]
    counts = np.bincount(labels)
    sums = np.stack([X[labels == g].sum(axis=0) for g in (0, 1)])
    squared = np.array([(X[labels == g] ** 2).sum() for g in (0, 1)])
    centroids = sums / counts[:, None]
    mean_dist = np.array([np.linalg.norm(X[labels == g] - centroids[g], axis=1).mean() for g in (0, 1)])
    got = split_metrics_from_aggregates(counts, sums, squared, mean_dist)
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, labels), rel=1e-9)
    assert got["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-9)
    # one group only: no split to measure
    assert split_metrics_from_aggregates(np.array([425, 0]), sums, squared, mean_dist) == {
        "davies_bouldin": None,
        "calinski_harabasz": None,
    }
