"""kNN distance: a row's score is its distance to its k-th nearest neighbour in a bounded reference sample."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, register, sample_indices, top_share_labels

#: Rows in the reference sample at most, unless a grid sets ``reference_rows``.
REFERENCE_ROWS = 10_000


def neighbour_distances(
    X: np.ndarray, *, n_neighbors: int, reference_rows: int, seed: int
) -> tuple[np.ndarray, int]:
    """Each row's distance to its ``n_neighbors``-th nearest neighbour among a reference sample.

    The reference is a seeded uniform sample of at most ``reference_rows`` rows of ``X``; a
    reference row does not count itself. The search is brute force (exact, and its cost does not
    grow with the dimension the way a tree's does), ``len(X) x reference`` distances computed in
    memory-bounded chunks: linear in the row count.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    n_neighbors, reference_rows, seed : int

    Returns
    -------
    distances : ndarray of shape (n_rows,)
    k : int
        The neighbour rank used (``n_neighbors``, lowered for a tiny table).
    """
    from sklearn.neighbors import NearestNeighbors

    idx = sample_indices(len(X), reference_rows, np.random.default_rng(seed))
    reference = X if idx is None else X[idx]
    k = max(1, min(n_neighbors, len(reference) - 1))
    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(reference)
    in_reference = np.zeros(len(X), dtype=bool)
    in_reference[slice(None) if idx is None else idx] = True
    distances = search.kneighbors(X, return_distance=True)[0]
    # a reference row finds itself first: its k-th neighbour is the (k+1)-th hit
    return np.where(in_reference, distances[:, k], distances[:, k - 1]), k


def knn(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Distance to the k-th nearest neighbour among at most ``reference_rows`` (and ``fit_sample_size``) rows."""
    started = time.perf_counter()
    reference_rows = min(int(params.get("reference_rows", REFERENCE_ROWS)), settings.fit_sample_size)
    scores, k = neighbour_distances(
        X,
        n_neighbors=int(params.get("n_neighbors", 10)),
        reference_rows=reference_rows,
        seed=settings.random_state,
    )
    labels, threshold = top_share_labels(scores, settings.contamination)
    info = {"fit_rows": min(len(X), reference_rows), "n_neighbors": k}
    return Detection("knn", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


register(
    Detector(
        name="knn",
        detect=knn,
        grids={"simple": {"n_neighbors": [10]}, "complex": {"n_neighbors": [5, 10, 20, 35]}},
        params=frozenset({"n_neighbors", "reference_rows"}),
    )
)
