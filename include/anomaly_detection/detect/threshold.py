"""Where the scores are cut: which rows are anomalies.

``modeling.contamination`` is either a fixed share (``0.05``: the top 5 % of rows) or ``auto``, the
default: a cut read from the scores themselves, without labels.

``auto`` fits a two-component Gaussian mixture to the scores (on a seeded sample of at most
:data:`MIXTURE_SAMPLE` of them) and cuts where the upper component stops being the more likely one,
walking down from the highest score. The share that gives is clipped to
[:data:`MIN_SHARE`, :data:`MAX_SHARE`]: a mixture that finds no separate upper group still flags the
most extreme :data:`MIN_SHARE`, and one that splits the bulk of the data in two flags at most
:data:`MAX_SHARE`. ``docs/SELECTION.md`` gives the evidence (mean F1 over the 32 development sets)
for this rule against the Tukey fence, the largest gap, EVT and the PyThresh methods.

Every cut counts rows (a record repeated 30 times counts 30 times) and labels ties at the cut
together, so every copy of a repeated anomaly is flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Fewest and most rows ``auto`` flags, as shares of the rows.
MIN_SHARE = 0.005
MAX_SHARE = 0.20
#: Scores the mixture is fitted on at most (a seeded uniform sample of them).
MIXTURE_SAMPLE = 20_000


@dataclass(frozen=True)
class Cut:
    """Labels from a cut of the scores.

    Attributes
    ----------
    labels : ndarray of shape (n_rows,), dtype int8
        1 for an anomaly.
    threshold : float
        The lowest score among the rows labelled anomalous.
    basis : str
        Why this many rows, in words for the verdict: "a fixed 5 % of rows", "the scores' upper group
        in a two-group mixture", ...
    """

    labels: np.ndarray
    threshold: float
    basis: str


def mixture_cut(scores: np.ndarray, *, seed: int = 0) -> float | None:
    """The score from which a two-component Gaussian mixture puts the rows in its upper component.

    Fitted on at most :data:`MIXTURE_SAMPLE` scores (seeded sample). Walking down from the highest
    score, the cut is the lowest score before the upper component's posterior drops to 0.5 or less.
    None when the scores take fewer than 3 distinct values or the highest score does not belong to
    the upper component (a wide lower component owns the tail: no separate group).

    Parameters
    ----------
    scores : ndarray of shape (n_rows,)
        Finite scores, higher means more anomalous.
    seed : int
    """
    from sklearn.mixture import GaussianMixture

    sample = scores
    if len(scores) > MIXTURE_SAMPLE:
        sample = np.random.default_rng(seed).choice(scores, MIXTURE_SAMPLE, replace=False)
    values = np.unique(sample)[::-1]
    if len(values) < 3:
        return None
    spread = float(values[0] - values[-1])
    mixture = GaussianMixture(2, random_state=seed, reg_covar=1e-6 * spread**2 + 1e-12)
    mixture.fit(sample[:, None])
    upper = int(np.argmax(mixture.means_.ravel()))
    in_upper = mixture.predict_proba(values[:, None])[:, upper] > 0.5
    if not in_upper[0]:
        return None
    leaving = np.flatnonzero(~in_upper)
    last = (leaving[0] - 1) if len(leaving) else len(values) - 1
    return float(values[last])


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The rows scoring at least the ``k``-th highest score; when ties at the cut would label more
    than ``max(k, n / 2)`` rows, only the scores strictly above it (when any are)."""
    n = len(scores)
    k = min(n, max(1, k))
    cut = np.partition(scores, n - k)[n - k]
    flagged = scores >= cut
    if flagged.sum() > max(k, n / 2):
        strictly = scores > cut
        if strictly.any():
            flagged = strictly
    return flagged.astype(np.int8), float(scores[flagged].min())


def cut_scores(scores: np.ndarray, contamination: float | str, *, seed: int = 0) -> Cut:
    """Label the anomalies among ``scores`` by ``contamination``: a share in (0, 0.5], or ``"auto"``.

    Parameters
    ----------
    scores : ndarray of shape (n_rows,)
        Higher means more anomalous; every row counts, copies included.
    contamination : float or "auto"
    seed : int
        Seed of the mixture's sample and start (``auto``).

    Returns
    -------
    Cut
    """
    n = len(scores)
    if contamination != "auto":
        labels, threshold = _top(scores, math.ceil(float(contamination) * n))
        return Cut(
            labels, threshold, f"a fixed {_percent(float(contamination))} of rows (modeling.contamination)"
        )
    cut = mixture_cut(scores, seed=seed)
    above = 0 if cut is None else int((scores >= cut).sum())
    top, basis = auto_case(cut, above, n)
    if top is not None:
        labels, threshold = _top(scores, top)
        return Cut(labels, threshold, basis)
    return Cut((scores >= cut).astype(np.int8), float(cut), basis)


def auto_case(cut: float | None, above: int, n: int) -> tuple[int | None, str]:
    """Which case of ``auto`` a mixture cut falls in, from counts alone (both engines use it).

    Parameters
    ----------
    cut : float or None
        :func:`mixture_cut` of the scores (None: no separate upper group).
    above : int
        Rows scoring at least ``cut`` (ignored when ``cut`` is None).
    n : int
        Rows in all.

    Returns
    -------
    top : int or None
        How many of the highest-scoring rows to flag when the share is clipped to
        [:data:`MIN_SHARE`, :data:`MAX_SHARE`] (or no group was found); None: flag the rows scoring
        at least ``cut``.
    basis : str
        The words for the cut (``info["threshold_rule"]``).
    """
    low, high = max(1, math.ceil(MIN_SHARE * n)), max(1, math.floor(MAX_SHARE * n))
    if cut is None:
        return (
            low,
            f"the scores form no separate upper group: the top {_percent(MIN_SHARE)} (the floor of contamination auto)",
        )
    if above < low:
        return (
            low,
            f"the scores' upper group holds {above:,} row(s), raised to the floor of {_percent(MIN_SHARE)}",
        )
    if above > high:
        return (
            high,
            f"the scores' upper group holds {_percent(above / n)} of rows, capped at {_percent(MAX_SHARE)}",
        )
    return None, "the scores' upper group: a two-group mixture of the scores puts these rows in the high group"  # fmt: skip


def _percent(share: float) -> str:
    text = f"{100 * share:.2f}".rstrip("0").rstrip(".")
    return f"{text} %"
