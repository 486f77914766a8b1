"""HBOS (Goldstein and Dengel, 2012): histogram-based outlier score.

Per feature, an equal-width histogram (``n_bins`` bins, as a density) of a fit sample (at most
``fit_sample_size`` rows); a row's score is ``-sum_j log2(density_j(bin of x_j) + alpha)``. A value
beyond the histogram's range takes the edge bin's density when it lies within ``tol`` bin widths of
the edge, else the lowest density of that feature. With every row in the fit sample the scores equal
PyOD's ``HBOS`` with static bins.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, fit_sample, register, top_share_labels

ALPHA = 0.1
TOLERANCE = 0.5


def histogram_scores(X: np.ndarray, fit: np.ndarray, n_bins: int) -> np.ndarray:
    """HBOS of every row of ``X`` (shape ``(n_rows, n_features)``) against histograms of ``fit``."""
    total = np.zeros(len(X))
    for j in range(X.shape[1]):
        density, edges = np.histogram(fit[:, j], bins=n_bins, density=True)
        log_density = np.log2(density + ALPHA)
        column = X[:, j]
        bins = np.digitize(column, edges, right=True)  # bins (a, b]; 0 at the lowest edge
        width = edges[1] - edges[0]
        score = np.empty(len(X))
        inside = (bins >= 1) & (bins <= n_bins)
        score[inside] = log_density[bins[inside] - 1]
        low, high = bins == 0, bins == n_bins + 1
        score[low] = np.where(edges[0] - column[low] <= width * TOLERANCE, log_density[0], log_density.min())
        score[high] = np.where(
            column[high] - edges[-1] <= width * TOLERANCE, log_density[-1], log_density.min()
        )
        total += score
    return -total


def hbos(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """HBOS scores of every row, from histograms of at most ``fit_sample_size`` rows."""
    started = time.perf_counter()
    n_bins = int(params.get("n_bins", 10))
    fit, _ = fit_sample(X, settings)
    scores = histogram_scores(X, fit, n_bins)
    labels, threshold = top_share_labels(scores, settings.contamination)
    info = {"fit_rows": len(fit)}
    return Detection("hbos", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


register(
    Detector(
        name="hbos",
        detect=hbos,
        grids={"simple": {"n_bins": [10]}, "complex": {"n_bins": [5, 10, 20, 50]}},
        params=frozenset({"n_bins"}),
    )
)
