"""Where the scores are cut: which rows are anomalies.

``modeling.contamination`` is either a fixed share (``0.05``: the top 5 % of rows) or ``auto``, the
default: a cut read from the scores themselves, without labels.

``auto`` fits a Gaussian mixture to the scores (on a seeded sample of at most
:data:`MIXTURE_SAMPLE` of them; see :func:`mixture_cut`) and cuts where its upper group stops being
the more likely one, walking down from the highest score. The share that gives is clipped to
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


#: Ashman's D above which a mixture component counts as separate from the bulk (the usual bound
#: for a clean split of two normal groups; Ashman, Bird and Zepf, 1994).
SEPARATION = 2.0


def mixture_cut(scores: np.ndarray, *, seed: int = 0) -> float | None:
    """The score from which a Gaussian mixture of the scores puts a row in an upper group.

    On a seeded sample of at most :data:`MIXTURE_SAMPLE` scores:

    1. a three-component mixture; its heaviest component is the bulk, and the upper groups are
       the components with a higher mean that are separated from it (Ashman's D above
       :data:`SEPARATION`); a heavy but continuous tail of the bulk is not separated from it;
    2. when the highest component is not separated, a two-component mixture, whose upper
       component is the upper group.

    Walking down from the highest score, the cut is the lowest score before the upper groups'
    posterior drops to 0.5 or less.

    Parameters
    ----------
    scores : ndarray of shape (n_rows,)
        Finite scores, higher means more anomalous.
    seed : int

    Returns
    -------
    float or None
        None when the scores take fewer than 3 distinct values or the highest score is not in an
        upper group.
    """
    return _mixture(scores, seed)[0]


def _mixture(scores: np.ndarray, seed: int) -> tuple[float | None, int]:
    """:func:`mixture_cut` and the number of components behind it (3 or 2; 0: no cut)."""
    from sklearn.mixture import GaussianMixture

    sample = scores
    if len(scores) > MIXTURE_SAMPLE:
        sample = np.random.default_rng(seed).choice(scores, MIXTURE_SAMPLE, replace=False)
    values = np.unique(sample)[::-1]
    if len(values) < 4:
        return None, 0
    spread = float(values[0] - values[-1])
    for components in (3, 2):
        mixture = GaussianMixture(components, random_state=seed, reg_covar=1e-6 * spread**2 + 1e-12)
        mixture.fit(sample[:, None])
        means, sds = mixture.means_.ravel(), np.sqrt(mixture.covariances_.ravel())
        bulk = int(np.argmax(mixture.weights_))
        if components == 3:
            separation = np.sqrt(2) * (means - means[bulk]) / np.sqrt(sds**2 + sds[bulk] ** 2)
            upper = np.flatnonzero(separation > SEPARATION)
            if np.argmax(means) not in upper:  # the highest scores are no separate group
                continue
        else:
            upper = np.array([int(np.argmax(means))])
        in_upper = mixture.predict_proba(values[:, None])[:, upper].sum(axis=1) > 0.5
        if not in_upper[0]:
            return None, 0
        leaving = np.flatnonzero(~in_upper)
        last = (leaving[0] - 1) if len(leaving) else len(values) - 1
        return float(values[last]), components
    return None, 0


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
    low, high = max(1, math.ceil(MIN_SHARE * n)), max(1, math.floor(MAX_SHARE * n))
    cut, components = _mixture(scores, seed)
    if cut is None:
        labels, threshold = _top(scores, low)
        return Cut(labels, threshold, f"the scores form no separate upper group: the top {_percent(MIN_SHARE)} of rows (the floor of contamination auto)")  # fmt: skip
    group = (
        "a three-group mixture of the scores separates an upper group from the bulk"
        if components == 3
        else "a two-group mixture of the scores puts them in its upper group"
    )
    above = int((scores >= cut).sum())
    if above < low:
        labels, threshold = _top(scores, low)
        return Cut(
            labels,
            threshold,
            f"{group}, {above:,} row(s), raised to the floor of {_percent(MIN_SHARE)} of rows",
        )
    if above > high:
        labels, threshold = _top(scores, high)
        return Cut(
            labels, threshold, f"{group}, {_percent(above / n)} of rows, capped at {_percent(MAX_SHARE)}"
        )
    return Cut((scores >= cut).astype(np.int8), float(cut), f"{group} (scores from {cut:.4g})")


def _percent(share: float) -> str:
    text = f"{100 * share:.2f}".rstrip("0").rstrip(".")
    return f"{text} %"
