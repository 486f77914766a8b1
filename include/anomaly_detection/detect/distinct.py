"""Distinct rows: fit each distinct feature row once, then score and label every row.

A record repeated many times is one point to a detector fitted on distinct rows, so a repeated
anomaly cannot mask itself (kNN and LOF exclude "itself" only once). Scores are broadcast back to
every row through the inverse mapping, and the share flagged counts rows, not distinct rows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from anomaly_detection.detect.detectors import Detection


def distinct_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first occurrence of each distinct row of ``X`` and every row's distinct row.

    Rows are hashed (one 64-bit hash over the columns, :func:`row_hashes`) and the hashes
    factorized: linear time, far faster than ``np.unique(X, axis=0)`` at 1M x 12.
    The result is then checked row by row, and on a hash collision computed exactly with
    ``np.unique``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)

    Returns
    -------
    first : ndarray of shape (n_distinct,)
        Position in ``X`` of each distinct row's first occurrence, increasing.
    inverse : ndarray of shape (n_rows,)
        ``X[first][inverse]`` equals ``X``.
    """
    n = len(X)
    inverse, uniques = pd.factorize(row_hashes(X))
    first = np.full(len(uniques), n, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(n, dtype=np.int64))
    if _maps_back(X, first, inverse):
        return first, inverse.astype(np.int64, copy=False)
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # number distinct rows by first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order].astype(np.int64), rank[inverse.ravel()].astype(np.int64)


def row_hashes(X: np.ndarray) -> np.ndarray:
    """One 64-bit FNV-1a-style hash per row of a float matrix (-0.0 as 0.0, every NaN alike).

    Returns
    -------
    ndarray of shape (n_rows,), dtype uint64
    """
    X = np.asarray(X, dtype=np.float64)
    hashes = np.full(len(X), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(X.shape[1] if X.ndim == 2 else 0):
            column = X[:, j] + 0.0  # -0.0 -> 0.0
            bits = np.where(np.isnan(column), np.nan, column).view(np.uint64)
            hashes = (hashes ^ bits) * prime
            hashes ^= hashes >> np.uint64(29)
    return hashes


def _maps_back(X: np.ndarray, first: np.ndarray, inverse: np.ndarray, block: int = 100_000) -> bool:
    """Whether ``X[first][inverse]`` equals ``X`` (NaN equal to NaN): only the rows mapped to an
    earlier row need checking (every other row maps to itself), in blocks of rows."""
    repeats = np.flatnonzero(first[inverse] != np.arange(len(X)))
    for start in range(0, len(repeats), block):
        rows = X[repeats[start : start + block]]
        back = X[first[inverse[repeats[start : start + block]]]]
        if not ((rows == back) | (np.isnan(rows) & np.isnan(back))).all():
            return False
    return True


def broadcast(detection: Detection, inverse: np.ndarray) -> Detection:
    """A detection on distinct rows extended to every row: each row takes its distinct row's score
    and label (:func:`~anomaly_detection.detect.grid.run_grid` then cuts share-labelled scores over
    every row, each copy counted).

    Parameters
    ----------
    detection : Detection
        Scores and labels of shape (n_distinct,).
    inverse : ndarray of shape (n_rows,)
        Each row's distinct row (see :func:`distinct_rows`).

    Returns
    -------
    Detection
        Scores and labels of shape (n_rows,); ``info["distinct_rows"]`` is ``n_distinct``.
    """
    info = {**detection.info, "distinct_rows": int(len(detection.scores))}
    return replace(detection, scores=detection.scores[inverse], labels=detection.labels[inverse], info=info)
