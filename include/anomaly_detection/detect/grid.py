"""Detection: run a detector plug-in (:mod:`.detectors`) over its ``ParameterGrid``.

Every detector gives a continuous anomaly score for every row (higher = more anomalous) and a
0/1 label; see :mod:`.detectors` for the interface and the built-in detectors (Isolation Forest,
KMeans and Bisecting KMeans distance, DBSCAN, kNN distance, Local Outlier Factor, the ensemble).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.model_selection import ParameterGrid

from anomaly_detection.detect.detectors import (  # noqa: F401  (the public names of detection)
    AUTO_FALLBACK_SHARE,
    DETECTORS,
    REGISTRY,
    Detection,
    DetectorSettings,
    top_share_labels,
    tukey_fence,
)

log = logging.getLogger(__name__)


def run_grid(
    algorithm: str, grid: dict[str, list[Any]], X: np.ndarray, settings: DetectorSettings
) -> Iterator[Detection]:
    """Yield one :class:`Detection` per point of ``ParameterGrid(grid)``.

    Parameters
    ----------
    algorithm : str
        A name in :data:`REGISTRY`.
    grid : dict of str to list
    X : ndarray of shape (n_rows, n_features)
        Scaled feature matrix without NaN.
    """
    detector = DETECTORS[algorithm]
    for params in ParameterGrid(grid):
        detection = detector(X, params, settings)
        log.info(
            "%s %s: %d anomalies (%.2f%%) in %.2fs",
            algorithm,
            params,
            int(detection.labels.sum()),
            100 * detection.labels.mean(),
            detection.seconds,
        )
        yield detection
