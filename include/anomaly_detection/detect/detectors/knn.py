"""kNN distance: a row's score is its distance to its k-th nearest neighbour (itself excluded)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, fit_sample, register, top_share_labels


def knn(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Distance to the k-th nearest neighbour (itself excluded) among at most ``fit_sample_size`` rows."""
    from sklearn.neighbors import NearestNeighbors

    started = time.perf_counter()
    fit_rows, idx = fit_sample(X, settings)
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


register(
    Detector(
        name="knn",
        detect=knn,
        grids={"simple": {"n_neighbors": [10]}, "complex": {"n_neighbors": [5, 10, 20, 35]}},
        params=frozenset({"n_neighbors"}),
    )
)
