"""The default ensemble: a default Isolation Forest and kNN distance, standardised, combined by maximum."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Detection, Detector, DetectorSettings, register, top_share_labels
from .isolation_forest import isolation_forest
from .knn import knn


def _standardise(scores: np.ndarray) -> np.ndarray:
    """Scores as z-scores (mean 0, standard deviation 1), so detectors of any scale combine."""
    spread = scores.std()
    return (scores - scores.mean()) / (spread if spread > 0 else 1.0)


def ensemble(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """A default Isolation Forest and kNN distance, standardised and combined by their maximum.

    A row scores high when either the global view (Isolation Forest: few random splits isolate it)
    or the local one (kNN: far from its k-th nearest neighbour) calls it extreme: the standardise-
    then-maximise rule of outlier ensembles (Aggarwal and Sathe, 2015). Standardising (not ranking)
    keeps how far out a row is, so a member that sees no outlier does not push its top ranks up.
    ``info`` keeps the members' rank agreement (Spearman) as a confidence figure.
    """
    from scipy.stats import spearmanr

    started = time.perf_counter()
    forest = isolation_forest(X, {}, settings)
    neighbours = knn(X, {"n_neighbors": int(params.get("n_neighbors", 10))}, settings)
    scores = np.maximum(_standardise(forest.scores), _standardise(neighbours.scores))
    labels, threshold = top_share_labels(scores, settings.contamination)
    agreement = float(spearmanr(forest.scores, neighbours.scores)[0]) if len(X) > 2 else float("nan")
    info = {"members": ["isolation_forest (defaults)", f"knn (n_neighbors={neighbours.info['n_neighbors']})"],
            "member_agreement": agreement}  # fmt: skip
    return Detection("ensemble", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


register(
    Detector(
        name="ensemble",
        detect=ensemble,
        grids={"simple": {"n_neighbors": [10]}, "complex": {"n_neighbors": [10]}},
        params=frozenset({"n_neighbors"}),
    )
)
