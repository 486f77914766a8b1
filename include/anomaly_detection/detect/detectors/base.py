"""What every detector plug-in shares: settings, the detection record, thresholds, the registry.

A detector is one module in this package that builds a :class:`Detector` and passes it to
:func:`register`: a name (what ``modeling.algorithms`` says), a function that fits on the scaled
matrix and scores every row, its hyperparameter grids (``simple`` and ``complex``) and the names
those grids may use. The package imports every module in it, so adding a detector is one file
(plus, optionally, its grids in ``configs/default.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomaly_detection.detect.threshold import cut_scores


@dataclass
class DetectorSettings:
    """Settings shared by every detector of a run (keyword-only construction)."""

    contamination: float | str = 0.05
    random_state: int = 0
    fit_sample_size: int = 100_000
    dbscan_sample_size: int = 5_000
    #: The last ``context_columns`` columns of the matrix a context-using detector gets are time
    #: context scores (features/context.py: one per measure), not features.
    context_columns: int = 0

    def __post_init__(self) -> None:
        if self.contamination == "auto":
            return
        if isinstance(self.contamination, str) or not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be 'auto' or in (0, 0.5], got {self.contamination!r}")


@dataclass
class Detection:
    """The outcome of one detector configuration on the full matrix.

    Attributes
    ----------
    scores : ndarray of shape (n_rows,)
        Anomaly score, higher means more anomalous.
    labels : ndarray of shape (n_rows,), dtype int8
        1 for an anomaly, 0 otherwise.
    threshold : float
        Scores above it are anomalies.
    info : dict
        Detector facts for sanity checks (``n_clusters``, ``degenerate`` reason, ``eps`` ...).
    """

    algorithm: str
    params: dict[str, Any]
    scores: np.ndarray
    labels: np.ndarray
    threshold: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def top_share_labels(scores: np.ndarray, contamination: float | str) -> tuple[np.ndarray, float]:
    """Labels and threshold of :func:`anomaly_detection.detect.threshold.cut_scores` (fixed share or ``auto``).

    Parameters
    ----------
    scores : ndarray of shape (n_rows,)
        Higher means more anomalous.
    contamination : float or "auto"

    Returns
    -------
    labels : ndarray of shape (n_rows,), dtype int8
    threshold : float
        The lowest score among the rows labelled anomalous.
    """
    cut = cut_scores(scores, contamination)
    return cut.labels, cut.threshold


def robust_standardise(scores: np.ndarray) -> np.ndarray:
    """Scores as robust z-scores, ``(s - median) / (1.4826 MAD)``, so detectors of any scale combine.

    The median and MAD are not moved by the anomalies themselves (a mean and standard deviation
    are). With a MAD of 0 (most rows score the same), the mean absolute deviation from the median
    stands in (scaled by 1.2533, equal to the standard deviation for normal data); with that 0 too,
    the scores are only centred.
    """
    centre = float(np.median(scores))
    deviations = np.abs(scores - centre)
    spread = 1.4826 * float(np.median(deviations)) or 1.2533 * float(deviations.mean()) or 1.0
    return (scores - centre) / spread


def sample_indices(n_rows: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    return None if n_rows <= size else np.sort(rng.choice(n_rows, size, replace=False))


def fit_sample(X: np.ndarray, settings: DetectorSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows a detector fits on (at most ``fit_sample_size``) and their indices in ``X`` (None: all)."""
    idx = sample_indices(len(X), settings.fit_sample_size, np.random.default_rng(settings.random_state))
    return (X if idx is None else X[idx]), idx


@dataclass(frozen=True)
class Detector:
    """One detector plug-in.

    Attributes
    ----------
    name : str
        Its name in ``modeling.algorithms``.
    detect : callable
        ``detect(X, params, settings) -> Detection``: fit on ``X`` (shape ``(n_rows, n_features)``,
        scaled, no NaN; fit on a bounded sample where n is large) and score every row.
    grids : dict
        ``{"simple": {param: [values]}, "complex": {...}}`` for ``ParameterGrid``.
    params : frozenset of str
        The hyperparameter names a grid may use (checked when the config loads).
    engines : tuple of str
        Where it runs: ``"native"`` and/or ``"spark"`` (the Spark jobs implement their own).
    share_labelled : bool
        True when its labels are the top ``contamination`` share of its scores (relabelled over all
        rows after fitting on distinct rows); False when a rule of its own labels a row (DBSCAN).
    uses_context : bool
        True when it reads the time context columns that follow the features.
    joins_context : bool
        True when its detection is joined with the time view's where a time context exists.
    """

    name: str
    detect: Callable[[np.ndarray, dict[str, Any], DetectorSettings], Detection]
    grids: dict[str, dict[str, list[Any]]]
    params: frozenset[str]
    engines: tuple[str, ...] = ("native",)
    share_labelled: bool = True
    #: True when it reads the time context columns (``settings.context_columns``); the others get
    #: the features only.
    uses_context: bool = False
    #: True when, with a time context, its detection is joined with the time view's
    #: (:func:`.time_series.join_context`): the default ensemble.
    joins_context: bool = False


REGISTRY: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    """Add a detector to the registry; a second detector of the same name is an error."""
    if detector.name in REGISTRY and REGISTRY[detector.name] is not detector:
        raise ValueError(f"two detectors are named {detector.name!r}")
    if set(detector.grids) != {"simple", "complex"}:
        raise ValueError(f"detector {detector.name!r}: grids need exactly 'simple' and 'complex'")
    for level, grid in detector.grids.items():
        unknown = set(grid) - detector.params
        if unknown:
            raise ValueError(
                f"detector {detector.name!r}: {level} grid uses unknown parameter(s) {sorted(unknown)}"
            )
    REGISTRY[detector.name] = detector
    return detector
