"""Isolation Forest: score = ``-score_samples`` (shorter average path = more anomalous)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, register, top_share_labels


def isolation_forest(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    started = time.perf_counter()
    params = dict(params)
    if isinstance(params.get("max_samples"), int):
        params["max_samples"] = min(params["max_samples"], len(X))
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(random_state=settings.random_state, n_jobs=-1, **params).fit(X)
    scores = -model.score_samples(X)
    labels, threshold = top_share_labels(scores, settings.contamination)
    return Detection(
        "isolation_forest", dict(params), scores, labels, threshold, time.perf_counter() - started
    )


register(
    Detector(
        name="isolation_forest",
        detect=isolation_forest,
        grids={
            "simple": {"n_estimators": [100], "max_samples": [256]},
            "complex": {
                "n_estimators": [100, 200, 300],
                "max_samples": [128, 256, 512],
                "max_features": [0.5, 0.75, 1.0],
            },
        },
        params=frozenset({"n_estimators", "max_samples", "max_features", "bootstrap"}),
        engines=("native", "spark"),
    )
)
