"""Why a row is anomalous: the features that deviate most from the normal rows, and in which direction.

The method is the same for every detector, so it is honest whatever model won: each feature of a
flagged row is compared with the rows the model called normal, as a robust z-score

    z_j = (x_j - median_j) / (1.4826 * MAD_j)

where the median and the median absolute deviation (MAD) are taken over the normal rows of the
report sample (a uniform random sample of the run). 1.4826 makes the MAD a consistent estimate of
the standard deviation for Gaussian data, so |z| reads like "standard deviations away". A feature
with MAD 0 (more than half the normal rows share one value) falls back to the mean absolute
deviation, then to a floor, so a row that leaves a constant feature still stands out.

The scores and the scaling are per run: z-scores are computed on the scaled features (MinMax is
affine per feature, so z is the same in original units), and the values shown are mapped back to
the API's units with the run's MinMax minimum and maximum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: 1 / Phi^-1(3/4): scales the MAD to the standard deviation of a normal distribution.
MAD_TO_SD = 1.4826
#: Mean absolute deviation to standard deviation for Gaussian data (sqrt(pi / 2)).
MEAN_AD_TO_SD = 1.2533
#: Smallest spread used (in scaled units, where every feature spans [0, 1]).
SCALE_FLOOR = 1e-6
#: Largest |z| reported; beyond it the number says nothing more.
Z_CAP = 1e6
#: Features named per row, and the smallest |z| worth naming (unless no feature reaches it).
TOP_FEATURES = 3
MIN_Z = 2.0
#: Below this many normal rows in the sample, every sampled row is the reference.
MIN_REFERENCE_ROWS = 20


@dataclass(frozen=True)
class Reference:
    """Robust location and spread of every feature over the normal rows.

    Attributes
    ----------
    names : list of str
        Feature names, length ``n_features``.
    median, scale : numpy.ndarray
        Per-feature median and robust standard deviation of the normal rows, in scaled units,
        shape ``(n_features,)``.
    minimum, span : numpy.ndarray
        The run's MinMax scaling: original value = scaled * span + minimum, shape ``(n_features,)``.
    rows : int
        How many rows the reference was computed from.
    """

    names: list[str]
    median: np.ndarray
    scale: np.ndarray
    minimum: np.ndarray
    span: np.ndarray
    rows: int

    def original(self, scaled: np.ndarray) -> np.ndarray:
        """Map scaled feature values back to the API's units (broadcasts over rows)."""
        return np.asarray(scaled, dtype=np.float64) * self.span + self.minimum


def robust_scale(X: np.ndarray, median: np.ndarray) -> np.ndarray:
    """Per-column robust standard deviation: 1.4826 * MAD, else 1.2533 * mean |x - median|, else a floor."""
    deviation = np.abs(X - median)
    mad = MAD_TO_SD * np.median(deviation, axis=0)
    mean_ad = MEAN_AD_TO_SD * deviation.mean(axis=0)
    return np.where(mad > SCALE_FLOOR, mad, np.maximum(mean_ad, SCALE_FLOOR))


def fit_reference(
    X: np.ndarray,
    normal: np.ndarray,
    names: Sequence[str],
    *,
    scaling: Mapping[str, Mapping[str, float]] | None = None,
) -> Reference:
    """Robust per-feature statistics of the normal rows of a sample.

    Parameters
    ----------
    X : numpy.ndarray
        Scaled features of a uniform sample of the run, shape ``(n_sample, n_features)``.
    normal : numpy.ndarray
        Which sampled rows the model called normal, shape ``(n_sample,)`` (bool).
    names : sequence of str
        Feature names, length ``n_features``.
    scaling : mapping, optional
        The data summary's ``scaling`` (``{"min": {name: v}, "max": {name: v}}``); without it
        values are shown in scaled units.

    Returns
    -------
    Reference

    Raises
    ------
    ValueError
        If the sample has no rows or the shapes disagree.
    """
    X = np.asarray(X, dtype=np.float64)
    normal = np.asarray(normal, dtype=bool)
    names = [str(n) for n in names]
    if X.ndim != 2 or X.shape[1] != len(names) or len(normal) != len(X):
        raise ValueError(
            f"features of shape {X.shape} do not match {len(names)} names and {len(normal)} flags"
        )
    if len(X) == 0:
        raise ValueError("no sampled rows to compare the anomalies with")
    reference = X[normal] if normal.sum() >= MIN_REFERENCE_ROWS else X
    median = np.median(reference, axis=0)
    minimum = np.array([float((scaling or {}).get("min", {}).get(n, 0.0)) for n in names])
    maximum = np.array([float((scaling or {}).get("max", {}).get(n, 1.0)) for n in names])
    span = np.where(maximum > minimum, maximum - minimum, 1.0)
    return Reference(names, median, robust_scale(reference, median), minimum, span, len(reference))


def zscores(reference: Reference, X: np.ndarray) -> np.ndarray:
    """Robust z-score of every feature of every row, shape ``(n_rows, n_features)``, capped at +-1e6."""
    z = (np.asarray(X, dtype=np.float64) - reference.median) / reference.scale
    return np.clip(z, -Z_CAP, Z_CAP)


@dataclass(frozen=True)
class Explanation:
    """The features that make one row anomalous, strongest first.

    Attributes
    ----------
    features : list of str
        Feature names.
    z : list of float
        Their robust z-scores (sign = direction).
    values, medians : list of float
        The row's value and the normal rows' median, in the API's units.
    """

    features: list[str]
    z: list[float]
    values: list[float]
    medians: list[float]

    @property
    def text(self) -> str:
        """``m03 ↑ 812 vs median 101 (+14.2 SD); m07 ↓ ...``."""
        return "; ".join(
            f"{name} {'↑' if z > 0 else '↓'} {_num(value)} vs median {_num(median)} ({_z(z)} SD)"
            for name, z, value, median in zip(self.features, self.z, self.values, self.medians)
        )

    @property
    def codes(self) -> str:
        """Machine-readable ``name:+z`` pairs, e.g. ``m03:+14.2;m07:-9.1``."""
        return ";".join(f"{name}:{_z(z)}" for name, z in zip(self.features, self.z))


def _num(value: float) -> str:
    if not np.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def _z(z: float) -> str:
    return f"{z:+.1f}" if abs(z) < 1e5 else (">+1e5" if z > 0 else "<-1e5")


def explain(
    reference: Reference, X: np.ndarray, *, top: int = TOP_FEATURES, min_z: float = MIN_Z
) -> list[Explanation]:
    """Name the ``top`` most deviating features of every row of ``X``.

    Parameters
    ----------
    reference : Reference
        From :func:`fit_reference`.
    X : numpy.ndarray
        Scaled features of the rows to explain, shape ``(n_rows, n_features)``.
    top : int, optional
        Most features named per row.
    min_z : float, optional
        Features below this |z| are left out, except the strongest one, which is always named.

    Returns
    -------
    list of Explanation
        One per row of ``X``, in order.
    """
    X = np.asarray(X, dtype=np.float64).reshape(-1, len(reference.names))
    z = zscores(reference, X)
    k = min(top, z.shape[1])
    order = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :k]
    strongest = np.take_along_axis(z, order, axis=1)
    values = np.take_along_axis(X, order, axis=1) * reference.span[order] + reference.minimum[order]
    medians = reference.original(reference.median)[order]
    out = []
    for i in range(len(X)):
        keep = [j for j in range(k) if j == 0 or abs(strongest[i, j]) >= min_z]
        out.append(
            Explanation(
                features=[reference.names[order[i, j]] for j in keep],
                z=[float(strongest[i, j]) for j in keep],
                values=[float(values[i, j]) for j in keep],
                medians=[float(medians[i, j]) for j in keep],
            )
        )
    return out


def feature_counts(explanations: Sequence[Explanation]) -> dict[str, int]:
    """How often each feature is named first or among the named features, most frequent first."""
    counts: dict[str, int] = {}
    for explanation in explanations:
        for name in explanation.features:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
