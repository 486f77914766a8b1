"""Detection: run a detector plug-in (:mod:`.detectors`) over its ``ParameterGrid``.

Every detector gives a continuous anomaly score for every row (higher = more anomalous) and a
0/1 label; see :mod:`.detectors` for the interface and the built-in detectors (Isolation Forest,
KMeans and Bisecting KMeans distance, DBSCAN, kNN distance, Local Outlier Factor, the ensemble).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.model_selection import ParameterGrid

from anomaly_detection.detect.detectors import (  # noqa: F401  (the public names of detection)
    DETECTORS,
    REGISTRY,
    Detection,
    DetectorSettings,
    top_share_labels,
)
from anomaly_detection.detect.detectors.time_series import join_context
from anomaly_detection.detect.distinct import broadcast, distinct_rows
from anomaly_detection.detect.threshold import cut_scores

log = logging.getLogger(__name__)


def run_grid(
    algorithm: str,
    grid: dict[str, list[Any]],
    X: np.ndarray,
    settings: DetectorSettings,
    *,
    fit_on_distinct: bool = True,
    context: np.ndarray | None = None,
    context_gates_values: bool = True,
) -> Iterator[Detection]:
    """Yield one :class:`Detection` per point of ``ParameterGrid(grid)``, scoring every row of ``X``.

    Parameters
    ----------
    algorithm : str
        A name in :data:`REGISTRY`.
    grid : dict of str to list
    X : ndarray of shape (n_rows, n_features)
        Scaled feature matrix without NaN; repeated rows are kept and each is scored.
    settings : DetectorSettings
    fit_on_distinct : bool
        Fit and score each distinct row once, then broadcast its score to every copy
        (:mod:`.distinct`); the share flagged still counts rows, ties flagged together.
    context : ndarray of shape (n_rows, n_measures), optional
        Time context scores (features/context.py). A detector that uses them gets them after the
        features, for every row; the ensemble is joined with the time view
        (:func:`~anomaly_detection.detect.detectors.time_series.join_context`).
    context_gates_values : bool
        True when the time view follows every feature, so it may veto the value view's flags.

    A detector labelled by a share of its scores is cut over every row by
    :func:`~anomaly_detection.detect.threshold.cut_scores` (``settings.contamination``); the words
    for that cut are ``info["threshold_rule"]``.
    """
    detector = REGISTRY[algorithm]
    if detector.uses_context:
        columns = 0 if context is None else context.shape[1]
        matrix = X if context is None else np.hstack([X, context])
        for params in ParameterGrid(grid):
            yield _logged(
                algorithm, params, detector.detect(matrix, params, replace(settings, context_columns=columns))
            )
        return
    first = inverse = None
    if fit_on_distinct:
        first, inverse = distinct_rows(X)
        if len(first) == len(X):
            first = None  # no repeated row: fit on X itself
        else:
            log.info("%s: fitting on %d distinct of %d rows", algorithm, len(first), len(X))
    fit_rows = X if first is None else X[first]
    for params in ParameterGrid(grid):
        detection = detector.detect(fit_rows, params, settings)
        if first is not None:
            detection = broadcast(detection, inverse)
        if detector.share_labelled:
            cut = cut_scores(detection.scores, settings.contamination, seed=settings.random_state)
            info = {**detection.info, "threshold_rule": cut.basis}
            detection = replace(detection, labels=cut.labels, threshold=cut.threshold, info=info)
            if detector.joins_context and context is not None:
                detection = join_context(
                    detection,
                    cut,
                    context,
                    settings.contamination,
                    settings.random_state,
                    gate=context_gates_values,
                )
        yield _logged(algorithm, params, detection)


def _logged(algorithm: str, params: dict[str, Any], detection: Detection) -> Detection:
    log.info(
        "%s %s: %d anomalies (%.2f%%) in %.2fs",
        algorithm,
        params,
        int(detection.labels.sum()),
        100 * detection.labels.mean(),
        detection.seconds,
    )
    return detection
