"""The features of the Spark preprocessing: the native column roles and feature plan, from Spark.

The rules are those of :mod:`anomaly_detection.features.roles` and
:mod:`anomaly_detection.features.derive`; only their inputs come from Spark:

* **roles**: :func:`~anomaly_detection.features.roles.infer_roles` on a bounded sample of the table
  at the driver, in row order: every row up to :data:`SAMPLE_ROWS` (the native inference itself,
  duplicates included), else a uniform sample of that many rows, whose roles are then corrected
  with whole-table facts: each numeric column's overall minimum and maximum join its sample
  (constant, 0/1 and epoch rules); exact distinct counts decide text columns (categorical,
  identifier or text) and numeric columns under an id-like or code-like name (codes or
  identifier); the row-counter rule (integers stepping by a constant over the first occurrences)
  is checked on every row with Spark aggregates;
* **plan**: the specs of ``plan_features`` (same order and names) from exact aggregates: value
  counts keyed by ``value_key``, missing counts, the main timestamp's middle 90 % span (exact
  ``percentile`` up to a million rows, ``percentile_approx`` beyond) and its rows per hour and weekday;
* **values**: one Spark expression per feature, equal to ``FeaturePlan.transform``: measures and
  booleans cast to double, missing indicators, rarity (``derive.rarity`` of the tail share) looked up in a map
  computed at the driver with ``tail_shares``, durations from the instants in nanoseconds (epoch
  numbers converted as pandas does), hour / weekday sin and cos looked up in tables computed at the
  driver with ``cyclic_position`` (one entry per minute of the day or week), so they are
  bit-identical to the native values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection.errors import DataError
from anomaly_detection.features.derive import (
    MISSING_INDICATOR_SHARE,
    NANOSECONDS,
    FeaturePlan,
    FeatureSpec,
    cycles,
    cyclic_position,
    paired_timestamps,
    rarity,
    tail_shares,
    value_key,
)
from anomaly_detection.features.roles import (
    CAMEL_ID,
    CODE_NAME,
    ID_NAME,
    MAX_CATEGORIES,
    MAX_CATEGORY_SHARE,
    MAX_CODE_SHARE,
    ColumnRole,
    infer_role,
    infer_roles,
)
from anomaly_detection.spark.jobs.common import POS, missing_expr

#: At most this many rows go to the driver to infer the column roles.
SAMPLE_ROWS = 20_000
#: True on the first occurrence of each row (over every original column), False on its repeats.
FIRST = "_first"
DAY_NS = 86_400 * 10**9
MINUTE_NS = 60 * 10**9
HOUR_NS = 3_600 * 10**9
#: Instants beyond this many nanoseconds from 1970 are out of pandas' range (missing).
MAX_NS = 9.2e18
#: Most distinct values of a column made categorical by ``processing.column_roles``.
MAX_SET_CATEGORIES = 100_000
#: Up to this many rows the main timestamp's quantiles are exact (``percentile``), else approximate.
EXACT_QUANTILE_ROWS = 1_000_000
#: Minutes of the lookup tables of the cyclic features.
CYCLE_MINUTES = {"hour": 1_440, "weekday": 7 * 1_440}


@dataclass
class TableFacts:
    """Whole-table facts from the job's first pass: row count, missing values per column and, per
    numeric column, the minimum and maximum of its present and of its finite values."""

    rows: int
    missing: dict[str, int]
    extremes: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Columns:
    """The table's columns as the job sees them: original name -> Spark column name ``c<i>``, the
    pandas dtypes of ``flattened.parquet``, the Spark data types and the floating columns."""

    names: list[str]
    col: dict[str, str]
    dtypes: dict[str, Any]
    types: dict[str, Any]
    floating: set[str]

    def missing(self, name: str) -> Any:
        from pyspark.sql import functions as F

        return missing_expr(F.col(self.col[name]), name in self.floating)

    def numeric(self, name: str) -> bool:
        """Numeric and not boolean (pandas)."""
        dtype = self.dtypes[name]
        return bool(pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype))


def extreme_aggregates(columns: Columns) -> list[Any]:
    """Aggregates of each numeric or boolean column's minimum and maximum present value and, for a
    floating column, its minimum and maximum finite value (integers stay exact)."""
    from pyspark.sql import functions as F

    out = []
    for name in columns.names:
        c, dtype = columns.col[name], columns.dtypes[name]
        if name in columns.floating:
            value = F.col(c).cast("double")
            present = F.when(~columns.missing(name), value)
            finite = F.when(~(value.isNull() | F.isnan(value) | value.isin(math.inf, -math.inf)), value)
            parts = [F.min(present), F.max(present), F.min(finite), F.max(finite)]
        elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            parts = [F.min(F.col(c)), F.max(F.col(c))]
        else:
            continue
        out += [e.alias(f"{c}_x{k}") for k, e in enumerate(parts)]
    return out


def read_extremes(columns: Columns, agg: Mapping[str, Any]) -> dict[str, list[Any]]:
    extremes = {}
    for name in columns.names:
        c = columns.col[name]
        values = {agg[f"{c}_x{k}"] for k in range(4) if f"{c}_x{k}" in agg}
        if values - {None}:
            extremes[name] = sorted(values - {None})
    return extremes


def role_sample(kept: Any, columns: Columns, rows: int, seed: int) -> pd.DataFrame:
    """At most :data:`SAMPLE_ROWS` rows at the driver (all of them when the table is that small), in
    row order, with the original column names (and ``FIRST``), the native dtypes where they convert.
    Date-times beyond pandas' nanosecond range (which ``toPandas`` cannot convert) are missing there."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampNTZType, TimestampType

    frame = kept
    if rows > SAMPLE_ROWS:
        fraction = min(1.0, 1.05 * SAMPLE_ROWS / rows)
        frame = kept.sample(withReplacement=False, fraction=fraction, seed=seed).limit(SAMPLE_ROWS)

    def sampled(name: str) -> Any:
        value = F.col(columns.col[name])
        if isinstance(columns.types[name], TimestampType | TimestampNTZType):
            micros = F.unix_micros(value.cast("timestamp"))
            return F.when(F.abs(micros) < F.lit(int(MAX_NS // 1000)), value)
        return value

    selected = frame.select(POS, FIRST, *(sampled(n).alias(f"s{i}") for i, n in enumerate(columns.names)))
    sample = selected.toPandas().sort_values(POS, kind="stable").reset_index(drop=True)
    sample = sample.drop(columns=POS).set_axis([FIRST, *columns.names], axis=1)
    for name in columns.names:
        dtype = columns.dtypes[name]
        if pd.api.types.is_numeric_dtype(dtype) and sample[name].dtype != dtype:
            try:
                sample[name] = sample[name].astype(dtype)
            except (TypeError, ValueError):
                pass
    return sample


# --------------------------------------------------------------------------- roles


def infer_spark_roles(
    kept: Any,
    sample: pd.DataFrame,
    processing: Any,
    columns: Columns,
    facts: TableFacts,
    *,
    ignored: Mapping[str, str],
    distinct_rows: int,
) -> tuple[dict[str, ColumnRole], dict[str, list[tuple[Any, int]]]]:
    """The column roles of the whole table (see the module docstring).

    ``sample`` comes from :func:`role_sample`. When it holds every row, ``infer_roles`` on it is the
    native inference itself (the repeats from ``FIRST``); otherwise its roles are corrected with
    whole-table aggregates and the row-counter rule is checked on every row.

    Returns the roles, in column order, and each categorical column's value counts as
    ``[(value, rows), ...]`` (the value as Spark returns it; None for missing).
    """
    from pyspark.sql import functions as F

    complete = len(sample) == facts.rows
    repeats = ~sample[FIRST].to_numpy(dtype=bool) if complete else np.ones(len(sample), dtype=bool)
    table = sample.drop(columns=FIRST)
    # on a sample the row-counter rule is off here (an empty sequence) and checked on every row below
    roles = infer_roles(table, processing, ignored=ignored, repeats=repeats)
    inferred = [
        n
        for n in columns.names
        if n not in ignored
        and n not in processing.column_roles
        and not (processing.include_features and n not in processing.include_features)
        and n not in processing.exclude_features
    ]
    if not complete:
        _correct_sampled_roles(kept, table, processing, columns, facts, roles, inferred, distinct_rows)

    counts: dict[str, list[tuple[Any, int]]] = {}
    for name in columns.names:
        if roles[name].role != "categorical":
            continue
        c = columns.col[name]
        # at most two missing groups (null, NaN): MAX_CATEGORIES + 3 rows means more values than
        # a categorical column has; a role set in the config gets every value, up to a bound
        limit = MAX_CATEGORIES + 3 if name in inferred else MAX_SET_CATEGORIES + 1
        grouped = kept.groupBy(F.col(c)).count().limit(limit).collect()
        if len(grouped) >= limit and name not in inferred:
            raise DataError(
                f"processing.column_roles makes {name!r} categorical, but it has more than "
                f"{MAX_SET_CATEGORIES} distinct values"
            )
        counts[name] = [(row[0], int(row[1])) for row in grouped]
    return roles, counts


def _correct_sampled_roles(
    kept: Any,
    sample: pd.DataFrame,
    processing: Any,
    columns: Columns,
    facts: TableFacts,
    roles: dict[str, ColumnRole],
    inferred: list[str],
    distinct_rows: int,
) -> None:
    """Correct the roles inferred on a sample with whole-table aggregates (in place)."""
    from pyspark.sql import functions as F

    for name in inferred:  # the whole table's extremes: constant, 0/1 and epoch rules
        extra = [v for v in facts.extremes.get(name, []) if not (sample[name] == v).any()]
        if not extra:
            continue
        if pd.api.types.is_bool_dtype(columns.dtypes[name]):
            if roles[name].role == "ignored" and roles[name].reason.startswith("constant"):
                roles[name] = ColumnRole("boolean", "true/false values")
            continue
        extended = pd.concat([sample[name], pd.Series(extra)], ignore_index=True)
        roles[name] = _inferred_role(name, extended, processing)

    # exact distinct counts: text columns, numeric columns under an id-like or code-like name; the
    # row-counter aggregates of the integer columns
    counted = [
        n
        for n in inferred
        if _groupable(columns.types[n])
        and (
            (
                not columns.numeric(n)
                and (
                    roles[n].role in ("categorical", "text", "identifier")
                    or (roles[n].role == "ignored" and roles[n].reason.startswith("constant"))
                )
            )
            or (columns.numeric(n) and roles[n].role in ("categorical", "identifier") and _coded(n))
        )
    ]
    steps = [
        n
        for n in inferred
        if distinct_rows > 20
        and pd.api.types.is_integer_dtype(columns.dtypes[n])
        and roles[n].role in ("measure", "categorical", "identifier")
    ]
    aggregates = [
        F.countDistinct(F.when(~columns.missing(n), F.col(columns.col[n]))).alias(columns.col[n])
        for n in counted
    ]
    for n in counted:
        if columns.numeric(n):  # integer-valued: every present value a whole number
            value = F.col(columns.col[n]).cast("double")
            fraction = F.when(~columns.missing(n) & ~value.isin(math.inf, -math.inf), value - F.floor(value))
            aggregates.append(F.max(F.abs(fraction)).alias(f"{columns.col[n]}_frac"))
    for n in steps:  # cheap necessary conditions of an arithmetic sequence over first occurrences
        c = columns.col[n]
        exact = F.when(F.col(FIRST), F.col(c).cast("decimal(38,0)"))
        aggregates += [
            F.count(exact).alias(f"{c}_n"),
            F.min(exact).alias(f"{c}_lo"),
            F.max(exact).alias(f"{c}_hi"),
            F.sum(exact).alias(f"{c}_sum"),
        ]
    agg = kept.agg(*aggregates).first().asDict() if aggregates else {}
    for name in counted:
        c, present = columns.col[name], facts.rows - facts.missing[name]
        if columns.numeric(name):
            integers = agg[f"{c}_frac"] == 0  # None: no finite value
            roles[name] = _code_role(name, int(agg[c]), present, integers)
        else:
            roles[name] = _text_role(name, roles[name], int(agg[c]), present)
    first_rows = kept.where(F.col(FIRST))
    for name in steps:
        if _is_step_sequence(first_rows, columns.col[name], agg, distinct_rows):
            roles[name] = ColumnRole("identifier", "integers stepping by a constant")
    if processing.include_features:
        for name in inferred:
            if roles[name].role in ("identifier", "text") and columns.numeric(name):
                roles[name] = ColumnRole("measure", "in include_features")


def _inferred_role(name: str, values: pd.Series, processing: Any) -> ColumnRole:
    """``infer_roles``' role of one column it infers (row-counter rule off)."""
    role = infer_role(name, values, first_occurrences=values.iloc[:0])
    if processing.include_features and role.role in ("identifier", "text"):
        if pd.api.types.is_numeric_dtype(values):
            return ColumnRole("measure", "in include_features")
    return role


def _groupable(spark_type: Any) -> bool:
    from pyspark.sql.types import ArrayType, MapType, StructType

    return not isinstance(spark_type, ArrayType | MapType | StructType)


def _id_like(name: str) -> bool:
    return bool(ID_NAME.search(name) or CAMEL_ID.search(name))


def _few(distinct: int, present: int) -> bool:
    return distinct <= MAX_CATEGORIES and distinct <= MAX_CATEGORY_SHARE * present


def _text_role(name: str, role: ColumnRole, distinct: int, present: int) -> ColumnRole:
    """The tail of ``infer_role``'s text branch with the whole table's distinct and present counts."""
    if distinct <= 1:
        return role  # constant on the sample too: the same reason
    if _few(distinct, present):
        return ColumnRole("categorical", f"text with {distinct} distinct values")
    id_like = _id_like(name)
    if id_like or distinct == present:
        return ColumnRole("identifier", "distinct text per row" if not id_like else "id-like name")
    return ColumnRole("text", f"free text ({distinct} distinct values)")


def _coded(name: str) -> bool:
    return _id_like(name) or bool(CODE_NAME.search(name))


def _code_role(name: str, distinct: int, present: int, integers: bool) -> ColumnRole:
    """The tail of ``infer_role``'s numeric branch for an id-like or code-like name, with the whole
    table's distinct and present counts."""
    kind = "id-like" if _id_like(name) else "code-like"
    codes = distinct <= MAX_CATEGORIES and distinct <= MAX_CODE_SHARE * present
    if codes and integers:
        return ColumnRole("categorical", f"{kind} name with {distinct} distinct codes")
    return ColumnRole("identifier", f"{kind} name with {distinct} distinct values")


def _is_step_sequence(first_rows: Any, c: str, agg: Mapping[str, Any], rows: int) -> bool:
    """Whether integer column ``c``, in row order over the first occurrences, steps by one non-zero
    constant (``roles.is_identifier_sequence``).

    The aggregates rule out almost every column: an arithmetic sequence of ``n`` terms has no gaps
    in its count, ``(max - min)`` divisible by ``n - 1`` and sum ``n * (min + max) / 2``. Only a
    column passing those gets the exact check, a ``lag`` over the row order (a window without
    partitions: one task, acceptable for the rare true ID column).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n, lo, hi, total = (agg[f"{c}_{k}"] for k in ("n", "lo", "hi", "sum"))
    if n != rows or lo is None or lo == hi:
        return False
    lo, hi, total = int(lo), int(hi), int(total)
    if (hi - lo) % (rows - 1) or 2 * total != rows * (lo + hi):
        return False
    exact = F.col(c).cast("decimal(38,0)")
    step = exact - F.lag(exact).over(Window.orderBy(POS))
    low, high = first_rows.select(step.alias("_d")).agg(F.min("_d"), F.max("_d")).first()
    return low is not None and low == high and low != 0


# --------------------------------------------------------------------------- the plan


@dataclass
class SparkPlan:
    """The fitted :class:`FeaturePlan` and what its Spark expressions need: each rarity feature's
    value -> feature map (and the values of a missing and of an unseen key)."""

    plan: FeaturePlan
    rarity: dict[str, tuple[dict[Any, float], float, float]] = field(default_factory=dict)


def plan_from_spark(
    kept: Any,
    columns: Columns,
    roles: Mapping[str, ColumnRole],
    counts: Mapping[str, list[tuple[Any, int]]],
    facts: TableFacts,
    *,
    time_column: str | None = None,
) -> SparkPlan:
    """``derive.plan_features`` from Spark aggregates: the same specs, in the same order."""
    from pyspark.sql import functions as F

    rows = facts.rows
    specs: list[FeatureSpec] = []
    rarity: dict[str, tuple[dict[Any, float], float, float]] = {}
    stamps = [name for name, role in roles.items() if role.role == "timestamp"]
    units = {name: roles[name].unit for name in stamps}
    for name, role in roles.items():
        if role.role in ("measure", "boolean"):
            specs.append(FeatureSpec(name, role.role, name))
            if facts.missing[name] / rows > MISSING_INDICATOR_SHARE:
                specs.append(FeatureSpec(f"{name} missing", "missing", name))
        elif role.role == "categorical":
            keyed: dict[str, int] = {}
            for value, n in counts[name]:
                key = value_key(value)
                keyed[key] = keyed.get(key, 0) + n
            ordered = dict(sorted(keyed.items(), key=lambda kv: -kv[1]))
            specs.append(FeatureSpec(name, "rarity", name, counts=ordered, rows=rows))
            rarity[name] = _rarity_map(ordered, [v for v, _ in counts[name]])
    for start, end in paired_timestamps(stamps):
        specs.append(FeatureSpec(f"duration {start} → {end}", "duration", start, end=end))
    main = time_column if time_column in stamps else (stamps[0] if stamps else None)
    if main is not None:
        ns = instant_ns(columns, main, units.get(main))
        hour = F.floor(F.pmod(ns, F.lit(DAY_NS)) / F.lit(float(HOUR_NS)))
        # the middle 90 % of the instants (pandas' linear interpolation; approximate on big tables)
        middle = (
            F.percentile(ns, [0.05, 0.95])
            if facts.rows <= EXACT_QUANTILE_ROWS
            else F.percentile_approx(ns, [0.05, 0.95], 100_000)
        )
        (ends,) = kept.agg(middle).first()
        span = pd.Timedelta((ends[1] - ends[0]) if ends else 0, unit="ns")
        weekday = F.pmod(F.floor(ns / F.lit(DAY_NS)) + F.lit(3), F.lit(7))  # 1970-01-01 was a Thursday
        hours, weekdays = np.zeros(24), np.zeros(7)
        for bucket, counts in ((hour, hours), (weekday, weekdays)):
            for value, n in kept.where(ns.isNotNull()).groupBy(bucket.alias("b")).count().collect():
                counts[int(value)] = n
        for kind, label in cycles(span, hours, weekdays):
            for part in ("sin", "cos"):
                specs.append(FeatureSpec(f"{main} {label} ({part})", kind, main, part=part))
    return SparkPlan(FeaturePlan(specs, {name: units[name] for name in stamps}), rarity)


def _rarity_map(counts: dict[str, int], values: list[Any]) -> tuple[dict[Any, float], float, float]:
    """The rarity (``derive.rarity`` of the tail share) of each present value, of a missing value and
    of an unseen one, computed with ``derive.tail_shares`` (so the logarithms are numpy's)."""
    present = [v for v in values if not _is_missing(v)]
    keys = pd.Series([value_key(v) for v in present] + ["", None], dtype=object)
    rarities = rarity(tail_shares(counts, keys))
    mapping = {v: float(r) for v, r in zip(present, rarities[: len(present)])}
    return mapping, float(rarities[-2]), float(rarities[-1])


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------- feature expressions


def instant_ns(columns: Columns, name: str, unit: str | None) -> Any:
    """Nanoseconds since 1970 (UTC) of a timestamp column, as ``derive.to_instants`` reads it: epoch
    numbers multiplied in floating point then truncated (pandas' float-to-nanosecond conversion),
    date-times as they are (naive ones taken as UTC), text parsed as ISO; null when missing or out of
    range."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, StringType, TimestampNTZType, TimestampType

    value, kind = F.col(columns.col[name]), columns.types[name]
    if unit:
        product = value.cast("double") * F.lit(float(NANOSECONDS[unit]))
        return F.when(~F.isnan(product) & (F.abs(product) < F.lit(MAX_NS)), product.cast("long"))
    if isinstance(kind, TimestampType | TimestampNTZType | DateType | StringType):
        stamp = F.try_to_timestamp(value) if isinstance(kind, StringType) else value.cast("timestamp")
        micros = F.unix_micros(stamp)
        return F.when(F.abs(micros) < F.lit(int(MAX_NS // 1000)), micros * F.lit(1000))
    return F.lit(None).cast("long")  # numbers outside the epoch ranges, other types: no instant


def feature_expressions(columns: Columns, fitted: SparkPlan) -> list[Any]:
    """One double expression per feature of the plan, in plan order (null = missing)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    plan = fitted.plan
    instants: dict[str, Any] = {}

    def when(name: str) -> Any:
        if name not in instants:
            instants[name] = instant_ns(columns, name, plan.time_units.get(name))
        return instants[name]

    out = []
    for spec in plan.specs:
        value = F.col(columns.col[spec.column])
        kind = columns.types[spec.column]
        if spec.kind in ("measure", "boolean"):
            usable = pd.api.types.is_numeric_dtype(columns.dtypes[spec.column]) or isinstance(
                kind, BooleanType
            )
            out.append(value.cast("double") if usable else F.lit(None).cast("double"))
        elif spec.kind == "missing":
            out.append(columns.missing(spec.column).cast("double"))
        elif spec.kind == "rarity":
            mapping, missing, unseen = fitted.rarity[spec.column]
            looked_up = F.lit(unseen)
            if mapping:
                pairs = [e for v, r in mapping.items() for e in (F.lit(v).cast(kind), F.lit(r))]
                looked_up = F.coalesce(F.try_element_at(F.create_map(*pairs), value), F.lit(unseen))
            out.append(F.when(columns.missing(spec.column), F.lit(missing)).otherwise(looked_up))
        elif spec.kind == "duration":
            out.append((when(spec.end) - when(spec.column)).cast("double") / F.lit(1e9))
        elif spec.kind in CYCLE_MINUTES:
            ns = when(spec.column)
            minute = F.floor(F.pmod(ns, F.lit(DAY_NS)) / F.lit(float(MINUTE_NS)))
            if spec.kind == "weekday":
                days = F.floor((ns - F.pmod(ns, F.lit(DAY_NS))).cast("double") / F.lit(float(DAY_NS)))
                minute = F.pmod(days + F.lit(3), F.lit(7)) * F.lit(1_440) + minute  # 1970-01-01: Thursday
            table = F.array(*(F.lit(v) for v in cyclic_table(spec.kind, spec.part or "sin")))
            out.append(F.element_at(table, (minute + F.lit(1)).cast("int")))
        else:
            raise ValueError(f"unknown feature kind {spec.kind!r}")
    return out


def cyclic_table(kind: str, part: str) -> list[float]:
    """The native sin or cos of each minute of the day (``hour``) or week (``weekday``, from Monday
    00:00), computed as ``FeaturePlan.transform`` computes it."""
    instants = pd.Series(pd.date_range("1970-01-05", periods=CYCLE_MINUTES[kind], freq="min", tz="UTC"))
    angle = 2 * np.pi * cyclic_position(instants, kind)
    return (np.sin(angle) if part == "sin" else np.cos(angle)).tolist()
