"""The ``time_series`` detector: each row against its own series' recent history (features/context.py),
and how it joins the default ensemble when the records have a time column."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from anomaly_detection.detect.threshold import Cut, cut_scores
from anomaly_detection.features.context import FENCE, UNJUDGED

from .base import Detection, Detector, DetectorSettings, register, robust_standardise

#: Just under the cut: a view whose flags do not count ranks its rows below every flagged row.
BELOW_CUT = 0.999


def context_scores(X: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """The largest time context score of every row (0 for a row without context)."""
    columns = settings.context_columns
    if columns <= 0:
        raise ValueError(
            "time_series needs a time context: a time column and a series of 2 days and 50 points"
        )
    return np.max(X[:, -columns:], axis=1)


def time_series(X: np.ndarray, params: dict[str, Any], settings: DetectorSettings) -> Detection:
    """Flag rows that are new to their series and far from their context (score above ``fence``).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features + n_measures)
        The last ``settings.context_columns`` columns are the context scores, one per measure.
    params : dict
        ``fence`` (6.0): the robust z a row's largest view must exceed.
    settings : DetectorSettings

    Returns
    -------
    Detection
    """
    started = time.perf_counter()
    fence = float(params.get("fence", FENCE))
    scores = context_scores(X, settings)
    labels = (scores > fence).astype(np.int8)
    flagged = int(labels.sum())
    rule = (
        f"the time view: {flagged:,} row(s) new to their series and more than {fence:g} robust SDs from "
        "their context (its rolling median, seasonal profile, previous point or level)"
    )
    threshold = float(scores[labels == 1].min()) if flagged else fence
    return Detection(
        "time_series",
        dict(params),
        scores,
        labels,
        threshold,
        time.perf_counter() - started,
        {"threshold_rule": rule},
    )


def join_context(
    value: Detection,
    cut: Cut,
    context: np.ndarray,
    contamination: float | str,
    seed: int,
    *,
    gate: bool = True,
) -> Detection:
    """The ensemble with the time view: what both flag, on one score scale.

    With ``contamination: auto`` a row is flagged when the time view flags it (its context score
    exceeds :data:`~anomaly_detection.features.context.FENCE`) or when the value ensemble's cut
    found a separate upper group, the row is in it, and the time view did not judge the row's value
    familiar (a value seen within the past week of its series is not an anomaly in a time series;
    a row the time view cannot judge, without a time, a value or a context, keeps its flag). Those
    two conditions hold only with ``gate``, when the time view follows every feature: in a table
    with features it does not follow (a duration, a category's rarity) the value view's own cut
    stands, its fallback share included. Scores are multiples of each view's
    cut (1 = at the cut); a view whose flags do not count ranks its rows just under 1. With a
    fixed share, both views are robustly standardised and the top share of their maximum is flagged.

    Parameters
    ----------
    value : Detection
        The value ensemble's detection, labelled by ``cut``.
    cut : Cut
    context : ndarray of shape (n_rows, n_measures)
    contamination : float or "auto"
    seed : int
    gate : bool
        Whether the time view's familiarity can veto the value view's flags.
    """
    time_scores = np.max(context, axis=1)
    info = {**value.info, "members": [*value.info.get("members", []), f"time_series (fence={FENCE:g})"]}
    if contamination != "auto":
        scores = np.maximum(robust_standardise(value.scores), robust_standardise(time_scores))
        joined = cut_scores(scores, contamination, seed=seed)
        info["threshold_rule"] = joined.basis
        return replace(value, scores=scores, labels=joined.labels, threshold=joined.threshold, info=info)
    novel = (time_scores > 0) | (time_scores <= UNJUDGED)
    threshold = cut.threshold if cut.threshold > 0 else float(np.max(value.scores)) or 1.0
    value_part = value.scores / threshold
    counted = (cut.grouped & novel) if gate else np.ones(len(time_scores), dtype=bool)
    value_part = np.where(counted, value_part, np.minimum(value_part, BELOW_CUT))
    scores = np.maximum(time_scores / FENCE, value_part)
    by_time = time_scores > FENCE
    labels = (by_time | (counted & (value.labels == 1))).astype(np.int8)
    scores = np.where(labels == 1, np.maximum(scores, 1.0), np.minimum(scores, BELOW_CUT))
    by_value = int(((labels == 1) & ~by_time).sum())
    value_words = (
        f"the value view adds {by_value:,} row(s){' not familiar to their series' if gate else ''} from its cut "
        f"({cut.basis})"
        if cut.grouped or not gate
        else "the value view's scores form no separate upper group, so it adds none"
    )
    info["threshold_rule"] = (
        f"the time view flags {int(by_time.sum()):,} row(s) new to their series and more than {FENCE:g} robust "
        f"SDs from their context; {value_words}"
    )
    return replace(value, scores=scores, labels=labels, threshold=1.0, info=info)


register(
    Detector(
        name="time_series",
        detect=time_series,
        grids={"simple": {"fence": [FENCE]}, "complex": {"fence": [5.0, FENCE, 7.0]}},
        params=frozenset({"fence"}),
        engines=("native", "spark"),
        share_labelled=False,
        uses_context=True,
    )
)
