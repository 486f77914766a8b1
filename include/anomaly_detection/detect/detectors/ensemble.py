"""The default ensemble: Isolation Forest, HBOS and a bounded kNN distance, robustly standardised,
combined by their maximum (chosen on the 32 development sets: docs/SELECTION.md)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, register, robust_standardise, top_share_labels
from .hbos import histogram_scores
from .isolation_forest import isolation_forest
from .knn import neighbour_distances


def ensemble(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Isolation Forest, HBOS and kNN distance, each robustly standardised, combined by their maximum.

    A row scores high when any view calls it extreme: the global one (Isolation Forest: few random
    splits isolate it), the per-feature one (HBOS: a value in a sparse bin of its histogram) or the
    local one (kNN: far from its k-th nearest neighbour in a reference sample of at most
    ``reference_rows`` rows). Each member's scores become robust z-scores (median and MAD, which the
    anomalies do not move), and the maximum is the standardise-then-maximise rule of outlier
    ensembles (Aggarwal and Sathe, 2015).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    params : dict
        ``n_neighbors`` (5), ``reference_rows`` (2000), ``n_bins`` (10).
    settings : DetectorSettings

    Returns
    -------
    Detection
        ``info``: ``members`` (their settings, in words), ``member_agreement`` (the smallest
        Spearman rank correlation of two members, a confidence figure).
    """
    from scipy.stats import spearmanr

    started = time.perf_counter()
    n_neighbors, reference_rows = int(params.get("n_neighbors", 5)), int(params.get("reference_rows", 2000))
    n_bins = int(params.get("n_bins", 10))
    reference_rows = min(reference_rows, settings.fit_sample_size)
    forest = isolation_forest(X, {}, settings).scores
    histograms = histogram_scores(X, X, n_bins)
    neighbours, k = neighbour_distances(
        X, n_neighbors=n_neighbors, reference_rows=reference_rows, seed=settings.random_state
    )
    standardised = np.column_stack([robust_standardise(s) for s in (forest, histograms, neighbours)])
    scores = standardised.max(axis=1)
    labels, threshold = top_share_labels(scores, settings.contamination)
    agreement = float("nan")
    if len(X) > 2:
        pairs = [spearmanr(standardised[:, a], standardised[:, b])[0] for a, b in ((0, 1), (0, 2), (1, 2))]
        agreement = float(np.nanmin(pairs)) if not np.isnan(pairs).all() else float("nan")
    info = {
        "members": [
            "isolation_forest (defaults)",
            f"hbos (n_bins={n_bins})",
            f"knn (n_neighbors={k}, reference of {min(len(X), reference_rows):,} rows)",
        ],
        "member_agreement": agreement,
    }
    return Detection("ensemble", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


register(
    Detector(
        name="ensemble",
        detect=ensemble,
        grids={"simple": {"n_neighbors": [5]}, "complex": {"n_neighbors": [5]}},
        params=frozenset({"n_neighbors", "reference_rows", "n_bins"}),
        engines=("native", "spark"),
        joins_context=True,
    )
)
