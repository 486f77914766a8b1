"""ECOD (Li et al., TKDE 2022): empirical cumulative distribution outlier detection.

Per feature, a row's left and right tail probabilities under the empirical distribution of a fit
sample (at most ``fit_sample_size`` rows) give ``U_l = -ln P(X <= x)`` and ``U_r = -ln P(X >= x)``;
the skewness of the feature picks one of them (``U_skew``: the right tail for right-skewed
features, the left for left-skewed, both for symmetric ones). As PyOD computes it, a row's score is
the sum over the features of ``max(U_l, U_r, U_skew)``. With every row in the fit sample the scores
equal PyOD's ``ECOD``; a row beyond the sample's range counts half a row in its tail.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, fit_sample, register, top_share_labels


def skewness_sign(X: np.ndarray) -> np.ndarray:
    """Sign of each column's (biased) sample skewness, shape ``(n_features,)``."""
    deviation = X - X.mean(axis=0)
    m2 = (deviation**2).mean(axis=0)
    m3 = (deviation**3).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(m2 > 0, m3 / m2**1.5, 0.0)
    return np.sign(np.nan_to_num(skew))


def tail_scores(X: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U_l, U_r, U_skew)`` of every cell of ``X`` (shape ``(n_rows, n_features)``) against ``fit``."""
    m = len(fit)
    floor = 0.5 / m
    left = np.empty_like(X, dtype=np.float64)
    right = np.empty_like(X, dtype=np.float64)
    for j in range(X.shape[1]):
        ordered = np.sort(fit[:, j])
        left[:, j] = np.searchsorted(ordered, X[:, j], side="right") / m
        right[:, j] = (m - np.searchsorted(ordered, X[:, j], side="left")) / m
    u_left = -np.log(np.maximum(left, floor))
    u_right = -np.log(np.maximum(right, floor))
    sign = skewness_sign(fit)
    u_skew = u_left * (sign <= 0) + u_right * (sign >= 0)
    return u_left, u_right, u_skew


def ecod(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """ECOD scores of every row, from the empirical distributions of at most ``fit_sample_size`` rows."""
    started = time.perf_counter()
    fit, _ = fit_sample(X, settings)
    scores = np.zeros(len(X))
    for start in range(0, len(X), 100_000):
        block = X[start : start + 100_000]
        u_left, u_right, u_skew = tail_scores(block, fit)
        scores[start : start + len(block)] = np.maximum(np.maximum(u_left, u_right), u_skew).sum(axis=1)
    labels, threshold = top_share_labels(scores, settings.contamination)
    info = {"fit_rows": len(fit)}
    return Detection("ecod", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


register(
    Detector(
        name="ecod",
        detect=ecod,
        grids={"simple": {}, "complex": {}},
        params=frozenset(),
        engines=("native", "spark"),
    )
)
