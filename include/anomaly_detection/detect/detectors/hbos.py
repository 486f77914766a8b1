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
    histograms = []
    for j in range(X.shape[1]):
        density, edges = np.histogram(fit[:, j], bins=n_bins, density=True)
        histograms.append((edges, np.log2(density + ALPHA)))
    return score_histograms(X, histograms)


def bin_edges(low: float, high: float, n_bins: int) -> np.ndarray:
    """The ``n_bins + 1`` equal-width edges ``np.histogram`` takes for values from ``low`` to ``high``."""
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, n_bins + 1, endpoint=True)


def log_density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``log2(density + ALPHA)`` of one feature's bin counts, the density as ``np.histogram(density=True)``
    computes it (the Spark job counts the bins itself)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log2(counts / np.diff(edges).astype(float) / counts.sum() + ALPHA)


def score_histograms(X: np.ndarray, histograms: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """HBOS of every row of ``X`` from one ``(edges, log2(density + ALPHA))`` pair per feature."""
    total = np.zeros(len(X))
    for j, (edges, log_densities) in enumerate(histograms):
        n_bins = len(edges) - 1
        column = X[:, j]
        bins = np.digitize(column, edges, right=True)  # bins (a, b]; 0 at the lowest edge
        width = edges[1] - edges[0]
        score = np.empty(len(X))
        inside = (bins >= 1) & (bins <= n_bins)
        score[inside] = log_densities[bins[inside] - 1]
        low, high = bins == 0, bins == n_bins + 1
        lowest = log_densities.min()
        score[low] = np.where(edges[0] - column[low] <= width * TOLERANCE, log_densities[0], lowest)
        score[high] = np.where(column[high] - edges[-1] <= width * TOLERANCE, log_densities[-1], lowest)
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
        engines=("native", "spark"),
    )
)
