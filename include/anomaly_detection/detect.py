"""Native detectors. Each gives a continuous anomaly score for every row (higher = more anomalous)
and a 0/1 label, and is tuned over a scikit-learn ``ParameterGrid``.

* Isolation Forest: ``-score_samples``; labels mark the top ``contamination`` share.
* KMeans and Bisecting KMeans: distance to the assigned centroid; labels mark the top ``contamination`` share.
* DBSCAN: fitted on a bounded sample; a row's score is its distance to the nearest core point and
  it is an anomaly when that distance exceeds ``eps`` (DBSCAN's own noise rule, applied to every
  row). Time and memory stay linear in the number of rows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from sklearn.cluster import DBSCAN, BisectingKMeans, KMeans
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import ParameterGrid
from sklearn.neighbors import NearestNeighbors

log = logging.getLogger(__name__)


@dataclass
class DetectorSettings:
    """Settings shared by every detector of a run (keyword-only construction)."""

    contamination: float | str = 0.05
    random_state: int = 0
    fit_sample_size: int = 100_000
    dbscan_sample_size: int = 5_000

    def __post_init__(self) -> None:
        if self.contamination == "auto":
            return
        if isinstance(self.contamination, str) or not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be 'auto' or in (0, 0.5], got {self.contamination!r}")


@dataclass
class Detection:
    """The outcome of one detector configuration on the full matrix.

    Attributes
    ----------
    scores : ndarray of shape (n_rows,)
        Anomaly score, higher means more anomalous.
    labels : ndarray of shape (n_rows,), dtype int8
        1 for an anomaly, 0 otherwise.
    threshold : float
        Scores above it are anomalies.
    info : dict
        Detector facts for sanity checks (``n_clusters``, ``degenerate`` reason, ``eps`` ...).
    """

    algorithm: str
    params: dict[str, Any]
    scores: np.ndarray
    labels: np.ndarray
    threshold: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


#: Share flagged when ``contamination: auto`` finds no usable fence (none or more than half the rows above it).
AUTO_FALLBACK_SHARE = 0.05


def tukey_fence(scores: np.ndarray) -> float:
    """Tukey's upper fence of the scores, Q3 + 1.5 IQR: scores above it are far in the upper tail."""
    q1, q3 = np.percentile(scores, [25, 75])
    return float(q3 + 1.5 * (q3 - q1))


def top_share_labels(scores: np.ndarray, contamination: float | str) -> tuple[np.ndarray, float]:
    """Label the ``ceil(contamination * n)`` highest scores as anomalies.

    With ``contamination="auto"`` the rows above Tukey's upper fence of the scores are anomalies;
    when that flags no row, or more than half, the anomalies are not a tail of this score and the
    top :data:`AUTO_FALLBACK_SHARE` is used instead (logged).

    Returns the labels and the threshold: the lowest score among the rows labelled anomalous.
    """
    n = len(scores)
    if contamination == "auto":
        above = scores > tukey_fence(scores)
        if 0 < above.sum() <= n / 2:
            return above.astype(np.int8), float(scores[above].min())
        log.warning(
            "contamination auto: %d of %d rows above the fence; using the top %.0f%% instead",
            int(above.sum()), n, 100 * AUTO_FALLBACK_SHARE,
        )  # fmt: skip
        contamination = AUTO_FALLBACK_SHARE
    k = min(n, max(1, math.ceil(contamination * n)))
    order = np.argpartition(-scores, k - 1)[:k]
    labels = np.zeros(n, dtype=np.int8)
    labels[order] = 1
    return labels, float(scores[order].min())


def _sample(n_rows: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    return None if n_rows <= size else np.sort(rng.choice(n_rows, size, replace=False))


def isolation_forest(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    started = time.perf_counter()
    params = dict(params)
    if isinstance(params.get("max_samples"), int):
        params["max_samples"] = min(params["max_samples"], len(X))
    model = IsolationForest(random_state=settings.random_state, n_jobs=-1, **params).fit(X)
    scores = -model.score_samples(X)
    labels, threshold = top_share_labels(scores, settings.contamination)
    return Detection("isolation_forest", dict(params), scores, labels, threshold, time.perf_counter() - started)


def kmeans(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    return _centroid_distance("kmeans", KMeans, X, params, settings)


def bisecting_kmeans(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    return _centroid_distance("bisecting_kmeans", BisectingKMeans, X, params, settings)


def _centroid_distance(
    algorithm: str, estimator: type, X: np.ndarray, params: dict[str, Any], settings: DetectorSettings
) -> Detection:
    """Fit ``estimator`` on at most ``fit_sample_size`` rows; score = distance to the assigned centroid."""
    started = time.perf_counter()
    rng = np.random.default_rng(settings.random_state)
    idx = _sample(len(X), settings.fit_sample_size, rng)
    fit_rows = X if idx is None else X[idx]
    n_clusters = min(int(params.get("n_clusters", 8)), len(fit_rows))
    model = estimator(random_state=settings.random_state, **{**params, "n_clusters": n_clusters}).fit(fit_rows)
    distances = np.empty(len(X))
    assignment = np.empty(len(X), dtype=np.int32)
    for start in range(0, len(X), 200_000):
        block = model.transform(X[start : start + 200_000])
        assignment[start : start + len(block)] = block.argmin(axis=1)
        distances[start : start + len(block)] = block.min(axis=1)
    labels, threshold = top_share_labels(distances, settings.contamination)
    sizes = np.bincount(assignment, minlength=model.n_clusters)
    info = {"n_clusters": int((sizes > 0).sum()), "cluster_sizes": sizes.tolist(), "fit_rows": len(fit_rows)}
    return Detection(algorithm, dict(params), distances, labels, threshold, time.perf_counter() - started, info)


def dbscan(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    started = time.perf_counter()
    params = dict(params)
    min_samples = int(params.get("min_samples", 5))
    rng = np.random.default_rng(settings.random_state)
    idx = _sample(len(X), settings.dbscan_sample_size, rng)
    fit_rows = X if idx is None else X[idx]
    info: dict[str, Any] = {"fit_rows": len(fit_rows)}
    if "eps" in params:
        eps = float(params["eps"])
    else:
        quantile = float(params.get("eps_quantile", 0.95))
        k = min(min_samples, len(fit_rows))
        kdist = NearestNeighbors(n_neighbors=k).fit(fit_rows).kneighbors(fit_rows)[0][:, -1]
        eps = float(np.quantile(kdist, quantile))
    eps = max(eps, 1e-12)
    info["eps"] = eps
    model = DBSCAN(eps=eps, min_samples=min_samples, metric=params.get("metric", "euclidean")).fit(fit_rows)
    core = fit_rows[model.core_sample_indices_]
    clusters = set(model.labels_.tolist()) - {-1}
    info["n_clusters"] = len(clusters)
    info["core_points"] = len(core)
    if len(core) == 0:
        info["degenerate"] = "no core points: every row is noise"
        scores = np.linalg.norm(X - fit_rows.mean(axis=0), axis=1)
        labels = np.ones(len(X), dtype=np.int8)
        return Detection("dbscan", params, scores, labels, 0.0, time.perf_counter() - started, info)
    tree = NearestNeighbors(n_neighbors=1, metric=params.get("metric", "euclidean"), n_jobs=-1).fit(core)
    scores = np.empty(len(X))
    for start in range(0, len(X), 100_000):
        scores[start : start + 100_000] = tree.kneighbors(X[start : start + 100_000], return_distance=True)[0][:, 0]
    labels = (scores > eps).astype(np.int8)
    return Detection("dbscan", params, scores, labels, eps, time.perf_counter() - started, info)


def _neighbour_fit(X: np.ndarray, settings: DetectorSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows neighbours are searched among (at most ``fit_sample_size``) and their indices in ``X``."""
    idx = _sample(len(X), settings.fit_sample_size, np.random.default_rng(settings.random_state))
    return (X if idx is None else X[idx]), idx


def knn(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Distance to the k-th nearest neighbour (itself excluded) among at most ``fit_sample_size`` rows."""
    started = time.perf_counter()
    fit_rows, idx = _neighbour_fit(X, settings)
    k = max(1, min(int(params.get("n_neighbors", 10)), len(fit_rows) - 1))
    tree = NearestNeighbors(n_neighbors=k + 1).fit(fit_rows)
    in_fit = np.zeros(len(X), dtype=bool)
    in_fit[np.arange(len(X)) if idx is None else idx] = True
    scores = np.empty(len(X))
    for start in range(0, len(X), 100_000):
        block = slice(start, min(start + 100_000, len(X)))
        distances = tree.kneighbors(X[block], return_distance=True)[0]
        # a row of the fit sample finds itself first: its k-th neighbour is the (k+1)-th hit
        scores[block] = np.where(in_fit[block], distances[:, k], distances[:, k - 1])
    labels, threshold = top_share_labels(scores, settings.contamination)
    info = {"fit_rows": len(fit_rows), "n_neighbors": k}
    return Detection("knn", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


def local_outlier_factor(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Local Outlier Factor (``novelty=False``) on at most ``fit_sample_size`` rows; the other rows are
    scored against that sample as new data (``novelty=True`` on the same sample)."""
    from sklearn.neighbors import LocalOutlierFactor

    started = time.perf_counter()
    fit_rows, idx = _neighbour_fit(X, settings)
    k = max(1, min(int(params.get("n_neighbors", 20)), len(fit_rows) - 1))
    model = LocalOutlierFactor(n_neighbors=k).fit(fit_rows)
    scores = np.empty(len(X))
    if idx is None:
        scores[:] = -model.negative_outlier_factor_
    else:
        scores[idx] = -model.negative_outlier_factor_
        rest = np.setdiff1d(np.arange(len(X)), idx, assume_unique=True)
        novelty = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(fit_rows)
        for start in range(0, len(rest), 100_000):
            rows = rest[start : start + 100_000]
            scores[rows] = -novelty.score_samples(X[rows])
    labels, threshold = top_share_labels(scores, settings.contamination)
    info = {"fit_rows": len(fit_rows), "n_neighbors": k}
    return Detection("local_outlier_factor", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


def _standardise(scores: np.ndarray) -> np.ndarray:
    """Scores as z-scores (mean 0, standard deviation 1), so detectors of any scale combine."""
    spread = scores.std()
    return (scores - scores.mean()) / (spread if spread > 0 else 1.0)


def ensemble(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """A default Isolation Forest and kNN distance, standardised and combined by their maximum.

    A row scores high when either the global view (Isolation Forest: few random splits isolate it)
    or the local one (kNN: far from its k-th nearest neighbour) calls it extreme: the standardise-
    then-maximise rule of outlier ensembles (Aggarwal and Sathe, 2015). Standardising (not ranking)
    keeps how far out a row is, so a member that sees no outlier does not push its top ranks up.
    ``info`` keeps the members' rank agreement (Spearman) as a confidence figure.
    """
    from scipy.stats import spearmanr

    started = time.perf_counter()
    forest = isolation_forest(X, {}, settings)
    neighbours = knn(X, {"n_neighbors": int(params.get("n_neighbors", 10))}, settings)
    scores = np.maximum(_standardise(forest.scores), _standardise(neighbours.scores))
    labels, threshold = top_share_labels(scores, settings.contamination)
    agreement = float(spearmanr(forest.scores, neighbours.scores)[0]) if len(X) > 2 else float("nan")
    info = {"members": ["isolation_forest (defaults)", f"knn (n_neighbors={neighbours.info['n_neighbors']})"],
            "member_agreement": agreement}  # fmt: skip
    return Detection("ensemble", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


DETECTORS: dict[str, Callable[[np.ndarray, dict[str, Any], DetectorSettings], Detection]] = {
    "isolation_forest": isolation_forest,
    "kmeans": kmeans,
    "bisecting_kmeans": bisecting_kmeans,
    "dbscan": dbscan,
    "knn": knn,
    "local_outlier_factor": local_outlier_factor,
    "ensemble": ensemble,
}


def run_grid(algorithm: str, grid: dict[str, list[Any]], X: np.ndarray, settings: DetectorSettings) -> Iterator[Detection]:
    """Yield one :class:`Detection` per point of ``ParameterGrid(grid)``.

    Parameters
    ----------
    algorithm : {"isolation_forest", "kmeans", "bisecting_kmeans", "dbscan"}
    grid : dict of str to list
    X : ndarray of shape (n_rows, n_features)
        Scaled feature matrix without NaN.
    """
    detector = DETECTORS[algorithm]
    for params in ParameterGrid(grid):
        detection = detector(X, params, settings)
        log.info(
            "%s %s: %d anomalies (%.2f%%) in %.2fs",
            algorithm,
            params,
            int(detection.labels.sum()),
            100 * detection.labels.mean(),
            detection.seconds,
        )
        yield detection
