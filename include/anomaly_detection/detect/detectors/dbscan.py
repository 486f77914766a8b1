"""DBSCAN fitted on a bounded sample; a row's score is its distance to the nearest core point, and it
is an anomaly when that distance exceeds ``eps`` (DBSCAN's own noise rule, applied to every row)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, register, sample_indices


def dbscan(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    started = time.perf_counter()
    params = dict(params)
    min_samples = int(params.get("min_samples", 5))
    rng = np.random.default_rng(settings.random_state)
    idx = sample_indices(len(X), settings.dbscan_sample_size, rng)
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
        scores[start : start + 100_000] = tree.kneighbors(X[start : start + 100_000], return_distance=True)[
            0
        ][:, 0]
    labels = (scores > eps).astype(np.int8)
    return Detection("dbscan", params, scores, labels, eps, time.perf_counter() - started, info)


register(
    Detector(
        name="dbscan",
        detect=dbscan,
        grids={
            "simple": {"eps_quantile": [0.95, 0.99], "min_samples": [10]},
            "complex": {"eps_quantile": [0.9, 0.95, 0.98, 0.99], "min_samples": [5, 10, 20]},
        },
        params=frozenset({"eps", "eps_quantile", "min_samples", "metric"}),
        share_labelled=False,
    )
)
