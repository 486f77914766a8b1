"""KMeans and Bisecting KMeans: fit on a bounded sample; score = distance to the assigned centroid."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, register, sample_indices, top_share_labels


def kmeans(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    from sklearn.cluster import KMeans

    return _centroid_distance("kmeans", KMeans, X, params, settings)


def bisecting_kmeans(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    from sklearn.cluster import BisectingKMeans

    return _centroid_distance("bisecting_kmeans", BisectingKMeans, X, params, settings)


def _centroid_distance(
    algorithm: str, estimator: type, X: np.ndarray, params: dict[str, Any], settings: DetectorSettings
) -> Detection:
    """Fit ``estimator`` on at most ``fit_sample_size`` rows; score = distance to the assigned centroid."""
    started = time.perf_counter()
    rng = np.random.default_rng(settings.random_state)
    idx = sample_indices(len(X), settings.fit_sample_size, rng)
    fit_rows = X if idx is None else X[idx]
    n_clusters = min(int(params.get("n_clusters", 8)), len(fit_rows))
    model = estimator(random_state=settings.random_state, **{**params, "n_clusters": n_clusters}).fit(
        fit_rows
    )
    distances = np.empty(len(X))
    assignment = np.empty(len(X), dtype=np.int32)
    for start in range(0, len(X), 200_000):
        block = model.transform(X[start : start + 200_000])
        assignment[start : start + len(block)] = block.argmin(axis=1)
        distances[start : start + len(block)] = block.min(axis=1)
    labels, threshold = top_share_labels(distances, settings.contamination)
    sizes = np.bincount(assignment, minlength=model.n_clusters)
    info = {"n_clusters": int((sizes > 0).sum()), "cluster_sizes": sizes.tolist(), "fit_rows": len(fit_rows)}
    return Detection(
        algorithm, dict(params), distances, labels, threshold, time.perf_counter() - started, info
    )


register(
    Detector(
        name="kmeans",
        detect=kmeans,
        grids={
            "simple": {"n_clusters": [3, 5, 8]},
            "complex": {"n_clusters": [2, 3, 4, 5, 6, 8, 10, 12, 15]},
        },
        params=frozenset({"n_clusters", "init", "n_init", "max_iter"}),
        engines=("native", "spark"),
    )
)
register(
    Detector(
        name="bisecting_kmeans",
        detect=bisecting_kmeans,
        grids={
            "simple": {"n_clusters": [3, 5, 8]},
            "complex": {"n_clusters": [2, 3, 4, 5, 6, 8, 10, 12, 15]},
        },
        params=frozenset({"n_clusters", "max_iter", "bisecting_strategy"}),
        engines=("native", "spark"),
    )
)
