"""Where the scores are cut: which rows are anomalies.

``modeling.contamination`` is either a fixed share (``0.05``: the top 5 % of rows) or ``auto``, the
default: a cut read from the scores themselves, without labels.

``auto`` fits a Gaussian mixture to the scores (on a seeded sample of at most
:data:`MIXTURE_SAMPLE` of them; see :func:`mixture_cut`). When it separates an upper group from the
bulk, the cut is where that group stops being the more likely one, and the share it gives is
clipped to [:data:`MIN_SHARE`, :data:`MAX_SHARE`]. When the scores form no separate group, the top
:data:`FALLBACK_SHARE` is flagged, and the verdict says so. ``docs/SELECTION.md`` gives the
evidence (mean F1 over the 32 development sets) for this rule against the Tukey fence, the largest
gap, EVT and the PyThresh methods.

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
#: Share flagged when the scores form no separate upper group.
FALLBACK_SHARE = 0.05
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
    grouped : bool
        True when ``auto`` found a separate upper group (not the fallback share, not a fixed share).
    """

    labels: np.ndarray
    threshold: float
    basis: str
    grouped: bool = False


#: Ashman's D above which a mixture component counts as separate from the bulk (the usual bound
#: for a clean split of two normal groups; Ashman, Bird and Zepf, 1994).
SEPARATION = 2.0


def mixture_sample(n: int, seed: int) -> np.ndarray | None:
    """The sorted row positions (of ``n``) whose scores the mixture is fitted on; None: every row.

    Both engines draw the same positions, so a Spark run fits the mixture on the native sample."""
    if n <= MIXTURE_SAMPLE:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, MIXTURE_SAMPLE, replace=False))


def mixture_cut(scores: np.ndarray, *, seed: int = 0) -> float | None:
    """The score from which a Gaussian mixture of the scores puts a row in a separate upper group.

    A three-component mixture is fitted to a seeded sample of at most :data:`MIXTURE_SAMPLE`
    scores. Its heaviest component is the bulk. The highest component is the upper group when it is
    separated from the bulk by Ashman's D above :data:`SEPARATION` (a heavy but continuous tail of
    the bulk is no separate group); the middle component joins it when it is separated from the
    bulk too and nearer (by D) to the highest than to the bulk. Walking down from the highest
    score, the cut is the lowest score before the upper group's posterior drops to 0.5 or less.

    Parameters
    ----------
    scores : ndarray of shape (n_rows,)
        Finite scores, higher means more anomalous.
    seed : int

    Returns
    -------
    float or None
        None when there is no separate upper group (or the scores take fewer than 4 values).
    """
    from sklearn.mixture import GaussianMixture

    positions = mixture_sample(len(scores), seed)
    sample = scores if positions is None else scores[positions]
    values = np.unique(sample)[::-1]
    if len(values) < 4:
        return None
    spread = float(values[0] - values[-1])
    mixture = GaussianMixture(3, random_state=seed, reg_covar=1e-6 * spread**2 + 1e-12)
    mixture.fit(sample[:, None])
    means, sds = mixture.means_.ravel(), np.sqrt(mixture.covariances_.ravel())
    bulk, top = int(np.argmax(mixture.weights_)), int(np.argmax(means))

    def separation(a: int, b: int) -> float:  # Ashman's D
        return float(np.sqrt(2) * abs(means[a] - means[b]) / np.sqrt(sds[a] ** 2 + sds[b] ** 2))

    if top == bulk or separation(top, bulk) <= SEPARATION:
        return None
    upper = [top] + [
        c
        for c in range(3)
        if c not in (top, bulk)
        and means[c] > means[bulk]
        and separation(c, bulk) > SEPARATION
        and separation(c, top) < separation(c, bulk)
    ]
    in_upper = mixture.predict_proba(values[:, None])[:, upper].sum(axis=1) > 0.5
    if not in_upper[0]:
        return None
    leaving = np.flatnonzero(~in_upper)
    return float(values[(leaving[0] - 1) if len(leaving) else len(values) - 1])


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
        return Cut(labels, threshold, basis, grouped=cut is not None)
    return Cut((scores >= cut).astype(np.int8), float(cut), basis, grouped=True)


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
        How many of the highest-scoring rows to flag: the fallback share when there is no separate
        group, or the group's share clipped to [:data:`MIN_SHARE`, :data:`MAX_SHARE`]; None: flag
        the rows scoring at least ``cut``.
    basis : str
        The words for the cut (``info["threshold_rule"]``).
    """
    low, high = max(1, math.ceil(MIN_SHARE * n)), max(1, math.floor(MAX_SHARE * n))
    group = "a mixture of the scores separates an upper group from the bulk"
    if cut is None:
        return max(1, math.ceil(FALLBACK_SHARE * n)), (
            f"the scores form no separate upper group, so the top {_percent(FALLBACK_SHARE)} of rows "
            "(the fallback of contamination auto; set a share to choose another)"
        )
    if above < low:
        return low, f"{group} of {above:,} row(s), raised to the floor of {_percent(MIN_SHARE)} of rows"
    if above > high:
        return high, f"{group} of {_percent(above / n)} of rows, capped at {_percent(MAX_SHARE)}"
    return None, f"{group}: the {above:,} rows from the cut up"


def _percent(share: float) -> str:
    text = f"{100 * share:.2f}".rstrip("0").rstrip(".")
    return f"{text} %"
