"""Local Outlier Factor (``novelty=False``) on a bounded sample; the other rows scored against it."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, fit_sample, register, top_share_labels


def local_outlier_factor(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Local Outlier Factor (``novelty=False``) on at most ``fit_sample_size`` rows; the other rows are
    scored against that sample as new data (``novelty=True`` on the same sample)."""
    from sklearn.neighbors import LocalOutlierFactor

    started = time.perf_counter()
    fit_rows, idx = fit_sample(X, settings)
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
    return Detection(
        "local_outlier_factor", dict(params), scores, labels, threshold, time.perf_counter() - started, info
    )


register(
    Detector(
        name="local_outlier_factor",
        detect=local_outlier_factor,
        grids={"simple": {"n_neighbors": [20]}, "complex": {"n_neighbors": [10, 20, 35, 50]}},
        params=frozenset({"n_neighbors"}),
    )
)
