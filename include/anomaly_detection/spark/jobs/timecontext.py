"""The time context on Spark: ``context.spark.parquet`` (preprocess) and the time view in detection.

**Preprocess** (:func:`write_spark_context`): with ``time.context: auto``, a time column
(``time.column`` or detected on the table's first rows, as natively) and numeric measures, every
series (each value of ``time.series_key``, or the whole table) is one group of
``groupBy(...).applyInPandas``: the group's rows, in position order, go through the native
:func:`~anomaly_detection.features.context.build_context`, so a series' scores are the native ones.
A series is named as natively (the key as pandas text, ``(missing)`` for a null) and numbered in the
sorted order of the names (the native ``pd.factorize(..., sort=True)``); the names are the only
per-series data collected, with each series' facts (or why it was left out). The output holds
``_pos`` and the native columns of ``context.parquet`` (``_series_name`` as plain text); rows without
context hold ``_series = _order = -1`` and the score ``UNJUDGED``.

**Detect**: :func:`read_context_scores` gives each row's largest context score (``_ctx``, joined by
``_pos``); :func:`time_series_scored` is the ``time_series`` detector and :func:`join_time_view` the
ensemble joined with the time view, the rules of
:func:`~anomaly_detection.detect.detectors.time_series.join_context` as Spark expressions.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection.config import PipelineConfig
from anomaly_detection.detect.detectors.time_series import BELOW_CUT
from anomaly_detection.errors import DataError, PipelineError
from anomaly_detection.features.context import FENCE, MIN_POINTS, MIN_SPAN, UNJUDGED, build_context
from anomaly_detection.report import timeline
from anomaly_detection.spark.jobs.common import POS, write_parts

#: The Spark context of a run (a directory of part files).
CONTEXT_DIR = "context.spark.parquet"
#: Each row's largest context score, joined to the features in detection.
CTX = "_ctx"
#: Relative error of the ``approxQuantile`` medians of the fixed-share join.
MEDIAN_ERROR = 1e-3
#: Just below 1: the cut of the joined scores (flagged rows score at least 1).
JOINED_CUT = float(np.nextafter(1.0, 0.0))
SCORE, VIEW, TYPICAL, SEASON = "|score", "|view", "|typical", "|season"


def context_dir(root: Path) -> Path:
    return Path(root) / CONTEXT_DIR


def key_texts(values: pd.Series) -> pd.Series:
    """Series names as the native layout gives them (features/context.py ``series_layout``)."""
    return values.astype("string").fillna("(missing)").astype(object)


def _output_schema(measures: list[str]) -> Any:
    from pyspark.sql.types import (
        ByteType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampNTZType,
    )

    fields = [
        StructField(POS, LongType()),
        StructField("_series", LongType()),
        StructField("_order", LongType()),
        StructField("_series_name", StringType()),
        StructField("_time", TimestampNTZType()),
    ]
    for m in measures:
        fields += [
            StructField(m + SCORE, DoubleType()),
            StructField(m + VIEW, ByteType()),
            StructField(m + TYPICAL, DoubleType()),
            StructField(m + SEASON, ByteType()),
        ]
    return StructType([*fields, StructField("_facts", StringType())])


def series_context(
    frame: pd.DataFrame, *, column: str, measures: list[str], codes: dict[str, int]
) -> pd.DataFrame:
    """One series' rows (``_pos``, ``_key``, ``_t``, ``_m0`` ...) -> its context rows, the native
    :func:`build_context` of the series; ``_facts`` (JSON) on its first row only."""
    frame = frame.sort_values(POS, kind="stable").reset_index(drop=True)
    name = str(frame["_key"].iloc[0])
    n = len(frame)
    table = pd.DataFrame({m: frame[f"_m{j}"] for j, m in enumerate(measures)})
    times = timeline.parse_times(frame["_t"])
    context = build_context(table, time_column=column, times=times, measures=measures)
    stamps = times.to_numpy(dtype="datetime64[ns]")
    out = pd.DataFrame({POS: frame[POS].to_numpy(dtype=np.int64)})
    if context is None:
        out["_series"] = out["_order"] = np.full(n, -1, dtype=np.int64)
        dated = stamps[~np.isnat(stamps)]
        facts = None
        if dated.size:
            span = pd.Timedelta(dated.max() - dated.min())
            why = f"{dated.size} points over {span}: needs {MIN_POINTS} points over {MIN_SPAN.days} days"
            facts = {"name": name, "skipped": why}
    else:
        out["_series"] = np.where(context.series >= 0, codes[name], -1).astype(np.int64)
        out["_order"] = context.order.astype(np.int64)
        fact = context.facts[0]
        fact.name = name
        facts = {"name": name, "fact": fact.to_dict()}
    out["_series_name"] = name
    out["_time"] = pd.Series(stamps).astype("datetime64[us]")
    for m in measures:
        mc = None if context is None else context.measures[m]
        out[m + SCORE] = np.full(n, UNJUDGED) if mc is None else mc.score
        out[m + VIEW] = np.zeros(n, dtype=np.int8) if mc is None else mc.view
        out[m + TYPICAL] = np.full(n, np.nan) if mc is None else mc.typical
        out[m + SEASON] = np.zeros(n, dtype=np.int8) if mc is None else mc.season
    out["_facts"] = [json.dumps(facts) if facts and i == 0 else None for i in range(n)]
    return out


def write_spark_context(
    table: Any,
    col: dict[str, str],
    measures: list[str],
    config: PipelineConfig,
    target: Any,
    log: logging.Logger,
) -> dict[str, Any]:
    """Compute the time context of ``table`` (columns ``_pos``, ``c<i>`` named by ``col``) and write
    it through ``target()`` (called only when there is something to write: it gives the staged
    path); the summary's ``time_context``, with the native keys."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    if config.time.context == "off":
        return {"applied": False, "why": "time.context is off"}
    names = list(col)
    head = (
        table.where(F.col(POS) < timeline.DETECT_ROWS)
        .select(POS, *(F.col(col[n]).alias(n) for n in names))
        .toPandas()
        .sort_values(POS, kind="stable")
        .drop(columns=POS)
        .reset_index(drop=True)
    )
    column = timeline.detect_time_column(head, config.time.column)
    if column is None:
        return {"applied": False, "why": "no time column (set time.column)"}
    if not measures:
        return {"applied": False, "why": "no numeric measure to follow over time", "column": column}
    key = config.time.series_key
    if key is not None and key not in col:
        raise DataError(
            f"time.series_key {key!r} is not a column; columns are: {', '.join(map(str, names[:40]))}"
        )
    if key is None:
        keyed = table.withColumn("_key", F.lit("all rows"))
    else:

        @F.pandas_udf(StringType())
        def as_text(values: pd.Series) -> pd.Series:
            return key_texts(values)

        keyed = table.withColumn("_key", as_text(F.col(col[key])))
    rows = keyed.select(
        POS,
        "_key",
        F.col(col[column]).alias("_t"),
        *(F.col(col[m]).alias(f"_m{j}") for j, m in enumerate(measures)),
    ).persist(StorageLevel.DISK_ONLY)
    series_names = sorted(r[0] for r in rows.select("_key").distinct().collect())
    codes = {name: i for i, name in enumerate(series_names)}
    spark_measures = list(measures)

    def per_series(frame: pd.DataFrame) -> pd.DataFrame:
        return series_context(frame, column=column, measures=spark_measures, codes=codes)

    result = (
        rows.groupBy("_key")
        .applyInPandas(per_series, schema=_output_schema(measures))
        .persist(StorageLevel.DISK_ONLY)
    )
    counts = result.agg(
        F.count(F.when(F.col("_series") >= 0, 1)).alias("with_context"),
        F.collect_list("_facts").alias("facts"),
    ).first()
    rows.unpersist()
    found = sorted((json.loads(f) for f in counts["facts"]), key=lambda f: codes[f["name"]])
    facts = [f["fact"] for f in found if "fact" in f]
    skipped = {f["name"]: f["skipped"] for f in found if "skipped" in f}
    if not facts:
        result.unpersist()
        why = "no series spans 2 days with 50 points"
        log.info("time context not applied: %s (column %r)", why, column)
        return {"applied": False, "why": why, "column": column}
    write_parts(result.drop("_facts"), target())
    result.unpersist()
    seasons = sorted({f["season"] for f in facts if f["season"]})
    summary = {
        "applied": True,
        "column": column,
        "series_key": key,
        "series": len(facts),
        "measures": list(measures),
        "seasonality": seasons or None,
        "rows_with_context": int(counts["with_context"]),
        "skipped_series": dict(list(skipped.items())[:20]),
        "skipped_series_count": len(skipped),
        "facts": facts[:50],
    }
    log.info(
        "time context on Spark: column %r, %d series, %d measure(s), seasonality %s; %d series too short",
        column, len(facts), len(measures), ", ".join(seasons or ["none"]), len(skipped),
    )  # fmt: skip
    if skipped:
        log.warning(
            "time context: %d series left out (%s); their rows are scored without it",
            len(skipped), "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]),
        )  # fmt: skip
    return summary


# --------------------------------------------------------------------------- detection


def read_context_scores(spark: Any, root: Path) -> Any:
    """``_pos`` and ``_ctx`` (the largest context score over the measures) of every row; None
    without ``context.spark.parquet``."""
    from pyspark.sql import functions as F

    path = context_dir(root)
    if not path.is_dir():
        return None
    stored = spark.read.parquet(str(path))
    scores = [F.col(f"`{c}`") for c in stored.columns if c.endswith(SCORE)]
    if not scores:
        return None
    best = F.greatest(*scores) if len(scores) > 1 else scores[0]
    return stored.select(F.col(POS), best.cast("double").alias(CTX))


def time_series_scored(
    data: Any, keep: list[str], params: dict[str, Any]
) -> tuple[Any, float, dict[str, Any]]:
    """The ``time_series`` detector: ``_score`` is ``_ctx``, rows above ``fence`` are flagged.
    Returns the scored rows, the threshold (the fence) and the info."""
    from pyspark.sql import functions as F

    if CTX not in data.columns:
        raise PipelineError(
            "time_series needs a time context: a time column and a series of 2 days and 50 points"
        )
    fence = float(params.get("fence", FENCE))
    scored = data.select(*keep, F.col(CTX).alias("_score"))
    flagged = scored.where(F.col("_score") > F.lit(fence)).count()
    rule = (
        f"the time view: {flagged:,} row(s) new to their series and more than {fence:g} robust SDs from "
        "their context (its rolling median, seasonal profile, previous point or level)"
    )
    return scored, fence, {"threshold_rule": rule, "fit_rows": 0, "n_clusters": 1}


def _standardised(frame: Any, column: str) -> Any:
    """``(column - median) / (1.4826 MAD)`` with the fallbacks of ``robust_standardise`` (approxQuantile)."""
    from pyspark.sql import functions as F

    centre = frame.approxQuantile(column, [0.5], MEDIAN_ERROR)[0]
    deviations = frame.select(F.abs(F.col(column) - F.lit(centre)).alias("_d"))
    spread = 1.4826 * deviations.approxQuantile("_d", [0.5], MEDIAN_ERROR)[0]
    spread = spread or 1.2533 * float(deviations.agg(F.avg("_d")).first()[0] or 0.0) or 1.0
    return (F.col(column) - F.lit(centre)) / F.lit(spread)


def join_time_view(
    scored: Any,
    threshold: float,
    grouped: bool,
    contamination: float | str,
    info: dict[str, Any],
    keep: list[str],
    *,
    gate: bool = True,
) -> tuple[Any, float | None]:
    """The ensemble (``_score`` cut at ``threshold``; ``grouped``: the auto cut found an upper group)
    joined with the time view (``_ctx``), as ``join_context``. Returns the joined rows and their
    threshold (``_score > threshold`` flags); None for a fixed share, to be cut again by the caller."""
    from pyspark.sql import functions as F

    info["members"] = [*info.get("members", []), f"time_series (fence={FENCE:g})"]
    value, time_score = F.col("_score"), F.col(CTX)
    if contamination != "auto":
        joined = F.greatest(_standardised(scored, "_score"), _standardised(scored, CTX))
        info["threshold_rule"] = (
            f"the top {float(contamination):.2%} of rows by the larger of the value and time views' robust z-scores"
        )
        return _cached(scored.select(*keep, joined.alias("_score")), scored), None
    if not (threshold > 0 and math.isfinite(threshold)):
        threshold = float(scored.agg(F.max("_score")).first()[0] or 0.0) or 1.0
    value_part = value / F.lit(threshold)
    novel = (time_score > 0) | (time_score <= F.lit(UNJUDGED))
    counted = (F.lit(bool(grouped)) & novel) if gate else F.lit(True)
    value_part = F.when(counted, value_part).otherwise(F.least(value_part, F.lit(BELOW_CUT)))
    raw = F.greatest(time_score / F.lit(FENCE), value_part)
    by_time = time_score > F.lit(FENCE)
    label = by_time | (counted & (value > F.lit(threshold)))
    final = F.when(label, F.greatest(raw, F.lit(1.0))).otherwise(F.least(raw, F.lit(BELOW_CUT)))
    joined = scored.select(
        *keep, final.alias("_score"), by_time.alias("_by_time"), label.alias("_label_joined")
    )
    counts = joined.agg(
        F.count(F.when(F.col("_by_time"), 1)).alias("time"),
        F.count(F.when(F.col("_label_joined") & ~F.col("_by_time"), 1)).alias("value"),
    ).first()
    value_words = (
        f"the value view adds {int(counts['value']):,} row(s){' not familiar to their series' if gate else ''} "
        f"from its cut ({info.get('threshold_rule', '')})"
        if grouped or not gate
        else "the value view's scores form no separate upper group, so it adds none"
    )
    info["threshold_rule"] = (
        f"the time view flags {int(counts['time']):,} row(s) new to their series and more than {FENCE:g} robust "
        f"SDs from their context; {value_words}"
    )
    return _cached(joined.select(*keep, "_score"), scored), JOINED_CUT


def _cached(frame: Any, base: Any) -> Any:
    """``frame`` cached on disk (computed from ``base``, which is then released)."""
    from pyspark import StorageLevel

    frame = frame.persist(StorageLevel.DISK_ONLY)
    frame.count()
    base.unpersist()
    return frame
