"""Why a row is anomalous: the features that set it apart from the normal rows, in the API's units.

The method is the same for every detector and both engines, so it is honest whatever model won.
Each feature of a flagged row is read again from the row itself (its observed value, through the
run's feature plan, never an imputed one) and compared with the rows the model called normal in
the report sample (a uniform random sample of the run):

* a **measure** or a **duration** by a robust z-score ``(x - median) / spread``, where the median
  is taken over the observed values, and the spread is 1.4826 x the median absolute deviation,
  else 1.2533 x the mean absolute deviation, and never below 1 % of the feature's range over the
  run (so no z-score comes from a spread of about 0): "fare ↑ 812 vs median 101 (+14.2 SD)";
* a **categorical code**, a **boolean**, a measure that mostly holds one value (MAD 0, such as a
  fee that is 0.5 on most rows) or the **hour / day** of a timestamp by how rare the row's
  value is: "payment_type = 9: rare value, in 0.3 % of rows". Its strength is the z-score whose
  two-sided tail probability is the share of rows with a value at most as common (so evenly spread
  codes are never rare), and it ranks beside the measures, but no SD figure is shown;
* a **missing** value by how rare missing is for that feature: "felt missing (in 2.0 % of rows)".

The ``TOP_FEATURES`` strongest features with strength at least ``MIN_Z`` are named (the strongest
always).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtri

from anomaly_detection.features.derive import CYCLIC_KINDS, FeaturePlan, FeatureSpec, tail_shares, value_key

#: 1 / Phi^-1(3/4): scales the MAD to the standard deviation of a normal distribution.
MAD_TO_SD = 1.4826
#: Mean absolute deviation to standard deviation for Gaussian data (sqrt(pi / 2)).
MEAN_AD_TO_SD = 1.2533
#: Smallest spread, as a share of the feature's range over the run.
SPREAD_FLOOR = 0.01
#: Features named per row, and the smallest strength worth naming (unless no feature reaches it).
TOP_FEATURES = 3
MIN_Z = 2.0
#: Below this many normal rows in the sample, every sampled row is the reference.
MIN_REFERENCE_ROWS = 20
MAGNITUDE_KINDS = frozenset({"measure", "duration"})
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def rarity_z(share: np.ndarray | float) -> np.ndarray:
    """The |z| of a standard normal with two-sided tail probability ``share`` (1 -> 0, 0.05 -> 1.96)."""
    share = np.clip(np.asarray(share, dtype=np.float64), 1e-12, 1.0)
    return np.maximum(ndtri(1.0 - share / 2.0), 0.0)


@dataclass(frozen=True)
class Reference:
    """The normal rows of the report sample, per feature.

    Attributes
    ----------
    plan : FeaturePlan
        The run's feature plan (``n_features`` specs).
    values : ndarray of shape (n_reference, n_features)
        The reference rows' features in the API's units, NaN where missing.
    median, spread, mad : ndarray of shape (n_features,)
        Median of the observed values, the floored robust spread and the median absolute deviation
        (0 when more than half of the rows share one value: such a measure reads as a rare value).
    minimum, span : ndarray of shape (n_features,)
        The run's MinMax scaling: original value = scaled * span + minimum.
    """

    plan: FeaturePlan
    values: np.ndarray
    median: np.ndarray
    spread: np.ndarray
    mad: np.ndarray
    minimum: np.ndarray
    span: np.ndarray

    @property
    def names(self) -> list[str]:
        return self.plan.names

    @property
    def rows(self) -> int:
        return len(self.values)

    def original(self, scaled: np.ndarray) -> np.ndarray:
        """Map scaled feature values back to the API's units (broadcasts over rows)."""
        return np.asarray(scaled, dtype=np.float64) * self.span + self.minimum


def robust_spread(values: np.ndarray, median: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Per column: 1.4826 * MAD, else 1.2533 * mean |x - median|, never below 1 % of ``span``; NaN ignored."""
    deviation = np.abs(values - median)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no spread
        mad = MAD_TO_SD * np.nanmedian(deviation, axis=0)
        mean_ad = MEAN_AD_TO_SD * np.nanmean(deviation, axis=0)
    floor = SPREAD_FLOOR * np.where(span > 0, span, 1.0)
    spread = np.where(np.nan_to_num(mad) > floor, mad, np.nan_to_num(mean_ad))
    return np.maximum(spread, floor)


def fit_reference(
    rows: pd.DataFrame,
    normal: np.ndarray,
    plan: FeaturePlan,
    *,
    scaling: Mapping[str, Mapping[str, float]] | None = None,
) -> Reference:
    """Statistics of the normal rows of the report sample.

    Parameters
    ----------
    rows : DataFrame of shape (n_sample, n_columns)
        The sampled rows of the flattened API table.
    normal : ndarray of shape (n_sample,), dtype bool
        Which sampled rows the model called normal.
    plan : FeaturePlan
        The run's feature plan (``data_summary.json["feature_plan"]``).
    scaling : mapping, optional
        The data summary's ``scaling`` (``{"min": {name: v}, "max": {name: v}}``).

    Returns
    -------
    Reference

    Raises
    ------
    ValueError
        If the sample has no rows or the shapes disagree.
    """
    normal = np.asarray(normal, dtype=bool)
    if len(normal) != len(rows):
        raise ValueError(f"{len(rows)} sampled rows do not match {len(normal)} flags")
    if len(rows) == 0:
        raise ValueError("no sampled rows to compare the anomalies with")
    values = plan.transform(rows).to_numpy(dtype=np.float64)
    reference = values[normal] if normal.sum() >= MIN_REFERENCE_ROWS else values
    names = plan.names
    minimum = np.array([float((scaling or {}).get("min", {}).get(n, 0.0)) for n in names])
    maximum = np.array([float((scaling or {}).get("max", {}).get(n, 1.0)) for n in names])
    span = np.where(maximum > minimum, maximum - minimum, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no median
        median = np.nanmedian(reference, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mad = np.nanmedian(np.abs(reference - median), axis=0)
    spread = robust_spread(reference, median, span)
    return Reference(plan, reference, median, spread, np.nan_to_num(mad, nan=1.0), minimum, span)


@dataclass(frozen=True)
class Explanation:
    """The features that make one row anomalous, strongest first.

    Attributes
    ----------
    features : list of str
        Feature names.
    z : list of float
        Their strength as a signed z-score (a rare value counts as positive).
    texts : list of str
        One phrase per feature, in the API's units.
    """

    features: list[str]
    z: list[float]
    texts: list[str]

    @property
    def text(self) -> str:
        return "; ".join(self.texts)

    @property
    def codes(self) -> str:
        """Machine-readable ``name:+z`` pairs, e.g. ``m03:+14.2;m07:-9.1``."""
        return ";".join(f"{name}:{z:+.1f}" for name, z in zip(self.features, self.z))


def _num(value: float) -> str:
    if not np.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:,.4g}" if abs(value) >= 1e4 else f"{value:.4g}"


def duration_text(seconds: float) -> str:
    """``45 s``, ``12.5 min``, ``23.7 h`` or ``3.2 d``."""
    if not np.isfinite(seconds):
        return str(seconds)
    size = abs(seconds)
    for limit, unit, per in ((120, "s", 1), (7_200, "min", 60), (172_800, "h", 3_600)):
        if size < limit:
            return f"{seconds / per:.3g} {unit}"
    return f"{seconds / 86_400:.3g} d"


def _share(share: float) -> str:
    if share == 0:
        return "0%"
    return f"{share:.1%}" if share >= 0.001 else f"{share:.2%}" if share >= 0.0001 else f"{share:.1e}"


def _bucket(spec: FeatureSpec, sin: np.ndarray, cos: np.ndarray) -> np.ndarray:
    turn = np.mod(np.arctan2(sin, cos) / (2 * np.pi), 1.0)
    return np.floor(turn * (24 if spec.kind == "hour" else 7) + 1e-9)


def _column_strength(
    reference: Reference, j: int, spec: FeatureSpec, x: np.ndarray, shown: pd.Series | None
) -> tuple[np.ndarray, list[str]]:
    """Signed strength and phrase of feature ``j`` for every explained row."""
    ref = reference.values[:, j]
    n_ref = max(len(ref), 1)
    missing = np.isnan(x)
    strength = np.zeros(len(x))
    texts = [""] * len(x)
    missing_share = float(np.isnan(ref).mean()) if len(ref) else 0.0
    if missing.any() and spec.kind != "rarity":
        strength[missing] = rarity_z(max(missing_share, 0.5 / n_ref))
        for i in np.flatnonzero(missing):
            texts[i] = f"{spec.name} missing (in {_share(missing_share)} of rows)"
    present = np.flatnonzero(~missing)
    if spec.kind == "measure" and reference.mad[j] == 0:
        spec = FeatureSpec(spec.name, "boolean", spec.column)  # mostly one value: read as a rare value
    if spec.kind in MAGNITUDE_KINDS:
        z = (x[present] - reference.median[j]) / reference.spread[j]
        strength[present] = z
        show = duration_text if spec.kind == "duration" else _num
        for i, zi in zip(present, z):
            arrow = "↑" if zi > 0 else "↓"
            texts[i] = (
                f"{spec.name} {arrow} {show(x[i])} vs median {show(reference.median[j])} ({zi:+.1f} SD)"
            )
    elif spec.kind == "rarity":
        counts, total = spec.counts or {}, max(spec.rows or 1, 1)
        keys = shown.map(value_key) if shown is not None else pd.Series(["?"] * len(x))
        strength[:] = rarity_z(tail_shares(counts, keys))
        for i in range(len(x)):
            key = keys.iloc[i]
            share = counts.get(key, 0) / total
            texts[i] = f"{spec.column} = {key or 'missing'}: rare value, in {_share(share)} of rows"
    elif spec.kind == "boolean":
        observed = pd.Series(ref[~np.isnan(ref)]).map(value_key)
        counts = observed.value_counts().to_dict()
        keys = pd.Series(x[present]).map(value_key)
        strength[present] = rarity_z(tail_shares(counts, keys))
        for i, key in zip(present, keys):
            share = counts.get(key, 0) / max(len(observed), 1)
            texts[i] = f"{spec.name} = {key}: rare value, in {_share(share)} of rows"
    return strength, texts


def _cyclic_strength(
    reference: Reference, j: int, spec: FeatureSpec, sin: np.ndarray, cos: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    k = reference.names.index(spec.name.replace("(sin)", "(cos)"))
    ref = _bucket(spec, reference.values[:, j], reference.values[:, k])
    ref = ref[np.isfinite(ref)]
    buckets = _bucket(spec, sin, cos)
    counts = pd.Series(ref).map(value_key).value_counts().to_dict()
    tails = tail_shares(counts, pd.Series(buckets).map(value_key))
    strength = np.zeros(len(sin))
    texts = [""] * len(sin)
    for i, bucket in enumerate(buckets):
        if not np.isfinite(bucket):
            continue
        share = counts.get(value_key(bucket), 0) / max(ref.size, 1)
        strength[i] = rarity_z(tails[i])
        when = f"{int(bucket):02d}:00" if spec.kind == "hour" else WEEKDAYS[int(bucket) % 7]
        what = "hour of day" if spec.kind == "hour" else "day of week"
        texts[i] = f"{spec.column} {what} {when}: rare, in {_share(share)} of rows"
    return strength, texts


def explain(
    reference: Reference, rows: pd.DataFrame, *, top: int = TOP_FEATURES, min_z: float = MIN_Z
) -> list[Explanation]:
    """Name the ``top`` strongest features of every row of ``rows``.

    Parameters
    ----------
    reference : Reference
        From :func:`fit_reference`.
    rows : DataFrame of shape (n_rows, n_columns)
        The rows to explain, as in the flattened API table.
    top : int, optional
        Most features named per row.
    min_z : float, optional
        Features weaker than this are left out, except the strongest one, which is always named.

    Returns
    -------
    list of Explanation
        One per row, in order.
    """
    rows = rows.reset_index(drop=True)
    values = reference.plan.transform(rows).to_numpy(dtype=np.float64)
    n, d = values.shape
    strength = np.zeros((n, d))
    texts: list[list[str]] = [[""] * d for _ in range(n)]
    for j, spec in enumerate(reference.plan.specs):
        if spec.kind == "missing" or (spec.kind in CYCLIC_KINDS and spec.part != "sin"):
            continue  # a missing value is explained on its own feature; a cycle on its sine
        if spec.kind in CYCLIC_KINDS:
            k = reference.names.index(spec.name.replace("(sin)", "(cos)"))
            column, phrases = _cyclic_strength(reference, j, spec, values[:, j], values[:, k])
        else:
            shown = rows[spec.column] if spec.kind == "rarity" and spec.column in rows else None
            column, phrases = _column_strength(reference, j, spec, values[:, j], shown)
        strength[:, j] = column
        for i in range(n):
            texts[i][j] = phrases[i]
    k = min(top, d)
    order = np.argsort(-np.abs(strength), axis=1, kind="stable")[:, :k]
    out = []
    for i in range(n):
        keep = [
            j
            for rank, j in enumerate(order[i])
            if (rank == 0 or abs(strength[i, j]) >= min_z) and texts[i][j]
        ]
        out.append(
            Explanation(
                features=[reference.names[j] for j in keep],
                z=[float(strength[i, j]) for j in keep],
                texts=[texts[i][j] for j in keep],
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


def named_features(codes: Iterable[str]) -> dict[str, int]:
    """:func:`feature_counts` from ``anomalies.csv``'s ``top_features`` column (``name:+z;...`` per row)."""
    counts: dict[str, int] = {}
    for row in codes:
        if not isinstance(row, str) or not row:
            continue
        for pair in row.split(";"):
            name = pair.rsplit(":", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
