"""The feature plan: which features each column gives, by its role (see :mod:`.roles`).

A plan is fitted once on the whole table (:func:`plan_features`), stored in ``data_summary.json``
(``feature_plan``) and applied to any rows of that table (:meth:`FeaturePlan.transform`): by the
native preprocessing to build the matrix, and by the explanations to read a flagged row's observed
values. Every value is in the API's units; missing stays NaN (imputation happens after scaling).

=========  ========================================  =========================================
kind       from                                      value
=========  ========================================  =========================================
measure    a measure column                          the number
boolean    a boolean column                          0 or 1
rarity     a categorical column                      ln(0.05 / tail share), at least 0, where the
                                                     tail share is the share of the rows whose
                                                     value is at most as common as this one (a
                                                     missing value is a value of its own): only
                                                     rare values move it, evenly spread codes
                                                     never do
hour       the main timestamp, when its middle 90 %   hour of day on the circle (sin, cos)
           spans >= 2 days and the busiest hour
           has >= 2x the rows of the quietest
weekday    ... >= 14 days, busiest day >= 1.5x       day of week on the circle (sin, cos)
duration   two paired timestamps of one record       end - start, in seconds
missing    a measure missing in more than half       1 where missing, else 0
           of the rows
=========  ========================================  =========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection.features.roles import ColumnRole, value_key

#: Start and end words of paired timestamps (``pickup``/``dropoff``, ``start``/``end`` ...).
PAIRED_WORDS = (
    ("pickup", "dropoff"), ("pick_up", "drop_off"), ("start", "end"), ("start", "stop"), ("begin", "end"),
    ("created", "closed"), ("created", "resolved"), ("opened", "closed"), ("open", "close"),
    ("departure", "arrival"), ("depart", "arrive"), ("checkin", "checkout"), ("from", "to"),
)  # fmt: skip
#: A value whose tail share is at least this is not rare at all (its rarity feature is 0).
RARE_SHARE = 0.05
#: A column missing in more than this share of the rows gets a missing-indicator feature.
MISSING_INDICATOR_SHARE = 0.5
MIN_SPAN_FOR_HOUR = pd.Timedelta(days=2)
MIN_SPAN_FOR_WEEKDAY = pd.Timedelta(days=14)
CYCLIC_KINDS = frozenset({"hour", "weekday"})
MIN_CYCLE_RATIO = {"hour": 2.0, "weekday": 1.5}
MIN_ROWS_PER_BUCKET = 20
NANOSECONDS = {"s": 10**9, "ms": 10**6, "us": 10**3}


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, kind (see the module table) and the column(s) it comes from."""

    name: str
    kind: str
    column: str
    end: str | None = None  # the end timestamp of a duration
    part: str | None = None  # "sin" or "cos" of a cyclic feature
    counts: dict[str, int] | None = None  # rarity: value key -> rows holding it
    rows: int | None = None  # rarity: rows counted


@dataclass
class FeaturePlan:
    """Feature specs in matrix order, plus each timestamp column's epoch unit (None: datetime values)."""

    specs: list[FeatureSpec]
    time_units: dict[str, str | None] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def to_dict(self) -> dict[str, Any]:
        return {"specs": [asdict(s) for s in self.specs], "time_units": dict(self.time_units)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeaturePlan:
        return cls([FeatureSpec(**s) for s in data["specs"]], dict(data.get("time_units") or {}))

    def why_no_spread(self, name: str, value: float | None) -> str:
        """The data summary's reason for a planned feature with one value (``value``) or none (None)."""
        if value is None:
            return "no finite values"
        kind = next((s.kind for s in self.specs if s.name == name), "measure")
        return "categorical: no rare value" if kind == "rarity" else f"constant ({value:g})"

    def keep(self, names: set[str]) -> FeaturePlan:
        """The plan without the features not in ``names``."""
        return FeaturePlan([s for s in self.specs if s.name in names], self.time_units)

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        """The features of ``table``'s rows in the API's units; shape ``(n_rows, n_features)``, NaN = missing."""
        instants: dict[str, pd.Series] = {}

        def when(column: str) -> pd.Series:
            if column not in instants:
                instants[column] = to_instants(table[column], self.time_units.get(column))
            return instants[column]

        columns: dict[str, np.ndarray] = {}
        for spec in self.specs:
            columns[spec.name] = _feature(spec, table, when)
        return pd.DataFrame(columns, index=table.index, columns=self.names)


def rarity(tails: np.ndarray) -> np.ndarray:
    """``ln(RARE_SHARE / tail share)``, 0 for every value whose tail share is at least ``RARE_SHARE``:
    only rare values move the feature, so evenly spread codes give a constant (dropped) feature."""
    return np.maximum(np.log(RARE_SHARE) - np.log(tails), 0.0)


def factorized_keys(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's position in a list of :func:`value_key` keys (missing: the last key, ``""``).

    Returns
    -------
    codes : ndarray of shape (n_rows,), int
    keys : list of str
        One key per distinct value, then ``""``; keys may repeat (``1`` and ``1.0`` give ``"1"``).
    """
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except TypeError:  # unhashable cells
        codes, uniques = pd.factorize(values.map(lambda v: v if v is None else str(v)), use_na_sentinel=True)
    keys = [value_key(u) for u in uniques] + [""]
    return np.where(codes < 0, len(keys) - 1, codes), keys


def tail_shares(counts: Mapping[str, int], keys: pd.Series) -> np.ndarray:
    """For each key, the share of the counted rows whose key is at most as common (unseen: half a row).

    Parameters
    ----------
    counts : mapping
        Key -> rows holding it.
    keys : Series of shape (n_rows,)

    Returns
    -------
    ndarray of shape (n_rows,), values in (0, 1]
    """
    total = max(sum(counts.values()), 1)
    ordered = sorted(counts.values())
    cumulative = np.cumsum(ordered)
    upto = {c: int(cumulative[np.searchsorted(ordered, c, side="right") - 1]) for c in set(ordered)}
    tail = {key: upto[count] / total for key, count in counts.items()}
    return keys.map(lambda k: tail.get(k, 0.5 / total)).to_numpy(dtype=np.float64)


def to_instants(values: pd.Series, unit: str | None) -> pd.Series:
    """Wall-clock times (as ``datetime64[ns, UTC]``) of a timestamp column: datetimes in their own
    zone, epoch numbers (UTC) or text."""
    if unit:
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        return pd.to_datetime(numbers * NANOSECONDS[unit], unit="ns", utc=True, errors="coerce")
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # the wall-clock time of the value's own zone
        return values.dt.tz_localize(None).dt.tz_localize("UTC")
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True, errors="coerce")
    return pd.to_datetime(values.astype("string"), utc=True, errors="coerce", format="mixed")


def _feature(spec: FeatureSpec, table: pd.DataFrame, when: Any) -> np.ndarray:
    if spec.kind in ("measure", "boolean"):
        values = table[spec.column]
        if pd.api.types.is_bool_dtype(values) or values.dtype == object:
            values = values.map(lambda v: float(v) if isinstance(v, bool | int | float) else np.nan)
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if spec.kind == "missing":
        return table[spec.column].isna().to_numpy(dtype=np.float64)
    if spec.kind == "rarity":
        codes, keys = factorized_keys(table[spec.column])
        return rarity(tail_shares(spec.counts or {}, pd.Series(keys)))[codes]
    instants = when(spec.column)
    if spec.kind == "duration":
        end = when(spec.end)
        return ((end - instants).dt.total_seconds()).to_numpy(dtype=np.float64, na_value=np.nan)
    if spec.kind in CYCLIC_KINDS:
        turn = cyclic_position(instants, spec.kind)
        angle = 2 * np.pi * turn
        return np.sin(angle) if spec.part == "sin" else np.cos(angle)
    raise ValueError(f"unknown feature kind {spec.kind!r}")


def cyclic_position(instants: pd.Series, kind: str) -> np.ndarray:
    """Where each instant lies in its day (``hour``) or week (``weekday``, Monday = 0), in [0, 1)."""
    hours = (instants.dt.hour + instants.dt.minute / 60).to_numpy(dtype=np.float64, na_value=np.nan)
    if kind == "hour":
        return hours / 24
    return (instants.dt.dayofweek.to_numpy(dtype=np.float64, na_value=np.nan) + hours / 24) / 7


def cycles(span: pd.Timedelta, hours: np.ndarray, weekdays: np.ndarray) -> list[tuple[str, str]]:
    """The cycles worth features: the middle 90 % of the times spans the period (``span``), and the
    rows per hour of day (``hours``, 24 counts) or day of week (``weekdays``, 7 counts) are uneven
    enough to be a pattern (the busiest bucket holds ``MIN_CYCLE_RATIO`` times the quietest, with
    ``MIN_ROWS_PER_BUCKET`` rows per bucket on average): an even spread of hours is noise."""
    found = []
    for kind, label, minimum, counts in (
        ("hour", "hour of day", MIN_SPAN_FOR_HOUR, hours),
        ("weekday", "day of week", MIN_SPAN_FOR_WEEKDAY, weekdays),
    ):
        counts = np.asarray(counts, dtype=np.float64)
        enough = counts.sum() >= MIN_ROWS_PER_BUCKET * len(counts)
        if span >= minimum and enough and counts.max() >= MIN_CYCLE_RATIO[kind] * counts.min():
            found.append((kind, label))
    return found


def paired_timestamps(names: list[str]) -> list[tuple[str, str]]:
    """Pairs ``(start, end)`` of timestamp columns whose names differ by a start and an end word."""
    pairs = []
    lowered = {name.lower(): name for name in names}
    for name in names:
        low = name.lower()
        for start, end in PAIRED_WORDS:
            if start in low:
                partner = lowered.get(low.replace(start, end))
                if partner and partner != name and (name, partner) not in pairs:
                    pairs.append((name, partner))
    return pairs


def plan_features(
    table: pd.DataFrame, roles: Mapping[str, ColumnRole], *, time_column: str | None = None
) -> FeaturePlan:
    """Fit the feature plan of a table from its column roles.

    Parameters
    ----------
    table : DataFrame of shape (n_rows, n_columns)
    roles : mapping
        Column -> role, from :func:`.roles.infer_roles`.
    time_column : str, optional
        The main timestamp (``time.column``); by default the first timestamp column.

    Returns
    -------
    FeaturePlan
    """
    rows = len(table)
    specs: list[FeatureSpec] = []
    stamps = [name for name, role in roles.items() if role.role == "timestamp"]
    units = {name: roles[name].unit for name in stamps}
    for name, role in roles.items():
        if role.role in ("measure", "boolean"):
            specs.append(FeatureSpec(name, role.role, name))
            if table[name].isna().mean() > MISSING_INDICATOR_SHARE:
                specs.append(FeatureSpec(f"{name} missing", "missing", name))
        elif role.role == "categorical":
            codes, keys = factorized_keys(table[name])
            counts: dict[str, int] = {}
            for key, n in zip(keys, np.bincount(codes, minlength=len(keys)).tolist()):
                if n:
                    counts[key] = counts.get(key, 0) + n
            counts = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
            specs.append(FeatureSpec(name, "rarity", name, counts=counts, rows=rows))
    for start, end in paired_timestamps(stamps):
        specs.append(FeatureSpec(f"duration {start} → {end}", "duration", start, end=end))
    main = time_column if time_column in stamps else (stamps[0] if stamps else None)
    if main is not None:
        instants = to_instants(table[main], units.get(main)).dropna()
        span = instants.quantile(0.95) - instants.quantile(0.05) if len(instants) else pd.Timedelta(0)
        hours = np.bincount(instants.dt.hour.to_numpy(dtype=np.int64), minlength=24)
        weekdays = np.bincount(instants.dt.dayofweek.to_numpy(dtype=np.int64), minlength=7)
        for kind, label in cycles(span, hours, weekdays):
            for part in ("sin", "cos"):
                specs.append(FeatureSpec(f"{main} {label} ({part})", kind, main, part=part))
    return FeaturePlan(specs, {name: units[name] for name in stamps})


def feature_plan(summary: Mapping[str, Any]) -> FeaturePlan:
    """The feature plan of a data summary; one measure per feature for a summary written without one."""
    if summary.get("feature_plan"):
        return FeaturePlan.from_dict(summary["feature_plan"])
    return FeaturePlan([FeatureSpec(str(n), "measure", str(n)) for n in summary["features"]])
