"""What every detector plug-in shares: settings, the detection record, thresholds, the registry.

A detector is one module in this package that builds a :class:`Detector` and passes it to
:func:`register`: a name (what ``modeling.algorithms`` says), a function that fits on the scaled
matrix and scores every row, its hyperparameter grids (``simple`` and ``complex``) and the names
those grids may use. The package imports every module in it, so adding a detector is one file
(plus, optionally, its grids in ``configs/default.yaml``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("anomaly_detection.detect.grid")


@dataclass
class DetectorSettings:
    """Settings shared by every detector of a run (keyword-only construction)."""

    contamination: float | str = 0.05
    random_state: int = 0
    fit_sample_size: int = 100_000
    dbscan_sample_size: int = 5_000

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


#: Share flagged when ``contamination: auto`` finds no usable fence (none or more than half the rows above it).
AUTO_FALLBACK_SHARE = 0.05


def tukey_fence(scores: np.ndarray) -> float:
    """Tukey's upper fence of the scores, Q3 + 1.5 IQR: scores above it are far in the upper tail."""
    q1, q3 = np.percentile(scores, [25, 75])
    return float(q3 + 1.5 * (q3 - q1))


def top_share_labels(scores: np.ndarray, contamination: float | str) -> tuple[np.ndarray, float]:
    """Label the rows scoring at least the ``ceil(contamination * n)``-th highest score as anomalies.

    ``n`` counts rows (a record repeated 30 times counts 30 times) and ties at the cut are labelled
    together, so every copy of a repeated anomaly is flagged. When the ties at the cut would label
    more than half the rows, only the scores strictly above the cut are labelled (when any are).
    With ``contamination="auto"`` the rows above Tukey's upper fence of the scores are anomalies;
    when that flags no row, or more than half, the anomalies are not a tail of this score and the
    top :data:`AUTO_FALLBACK_SHARE` is used instead (logged).

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
    n = len(scores)
    if contamination == "auto":
        above = scores > tukey_fence(scores)
        if 0 < above.sum() <= n / 2:
            return above.astype(np.int8), float(scores[above].min())
        log.warning(
            "contamination auto: %d of %d rows above the fence; using the top %.0f%% instead",
            int(above.sum()), n, 100 * AUTO_FALLBACK_SHARE,
        )  # fmt: skip
        contamination = AUTO_FALLBACK_SHARE
    k = min(n, max(1, math.ceil(contamination * n)))
    cut = np.partition(scores, n - k)[n - k]
    flagged = scores >= cut
    if flagged.sum() > max(k, n / 2):
        strictly = scores > cut
        if strictly.any():
            flagged = strictly
    return flagged.astype(np.int8), float(scores[flagged].min())


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
    """

    name: str
    detect: Callable[[np.ndarray, dict[str, Any], DetectorSettings], Detection]
    grids: dict[str, dict[str, list[Any]]]
    params: frozenset[str]
    engines: tuple[str, ...] = ("native",)
    share_labelled: bool = True


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
