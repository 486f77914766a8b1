"""Spark version of ``preprocess_stage``: the same rules and summary, from Spark DataFrames.

    spark-submit spark_jobs/preprocess.py --run-dir DIR --config DIR/config.resolved.yaml

Reads ``flattened.parquet`` (one file, or the part files of bulk ingestion) and writes
``features.spark.parquet``, a directory of Spark part files with ``_pos`` (the row's position in
``flattened.parquet``), the scaled features ``f0``, ``f1``, ... (named in ``data_summary.json``'s
``features``) and, with a label column, ``_label``; and ``data_summary.json`` with the fields
:func:`anomaly_detection.pipeline.stages.preprocess_stage` writes. The table never passes through the
driver: only aggregates, the roles' bounded sample, categorical value counts and the imputation's
bounded fit sample do. The rules are those of
:mod:`anomaly_detection.features.preprocess`:

* text: string columns of only numeric or ISO date-time text are cast as the native flattening
  converts them (:mod:`.text_columns`; bulk ingestion keeps every string a string);
* duplicates: rows equal over every original column after the first occurrence (lowest position)
  are counted and their positions written to ``duplicate_rows.spark.parquet``; no row is removed;
* label column: 0/1, true/false or normal/anomaly, the same error messages;
* features: the native column roles and feature plan (:mod:`anomaly_detection.features.roles`,
  :mod:`anomaly_detection.features.derive`), computed by :mod:`.features`: roles inferred on a
  bounded sample at the driver (at most 20,000 rows) and checked against whole-table aggregates
  (extremes, distinct counts, value counts, the row-counter rule over the first occurrences), the
  plan fitted from exact Spark counts, each feature a Spark expression equal to
  ``FeaturePlan.transform``; features without spread dropped; the same ``roles``,
  ``feature_plan``, ``features`` and ``columns_dropped`` (with the native reasons) in the summary;
* +-inf becomes missing; MinMax scaling from min/max aggregates (bit-identical to numpy);
* time context: with a time column, ``context.spark.parquet`` (``_pos`` and the native context
  columns), each series computed by the native code in ``applyInPandas`` (:mod:`.timecontext`), and
  ``time_context`` in the summary;
* missing values take the coordinate of the nearest KMeans centroid (pyspark.ml KMeans fitted on
  at most 50,000 complete rows, distance over the observed coordinates); with fewer than 20
  complete rows, or ``missing_values: median``, the column median (``approxQuantile``).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from anomaly_detection import atomic
from anomaly_detection.config import PipelineConfig
from anomaly_detection.errors import DataError, PipelineError
from anomaly_detection.features.preprocess import (
    FALSE_TEXTS,
    IMPUTATION_FIT_SAMPLE,
    MIN_COMPLETE_ROWS_FOR_KMEANS,
    MIN_ROWS,
    TRUE_TEXTS,
    log_feature_choice,
)
from anomaly_detection.features.roles import FEATURE_ROLES
from anomaly_detection.ingest.sources import SOURCE_COLUMN
from anomaly_detection.pipeline.timeview import context_path
from anomaly_detection.runs import RunPaths
from anomaly_detection.spark.jobs.common import (
    POS,
    Outputs,
    current_job,
    is_numeric_dtype,
    missing_expr,
    pandas_dtypes,
    parse_args,
    read_positioned,
    run_job,
    stage,
    write_parts,
)
from anomaly_detection.spark.jobs.features import (
    FIRST,
    Columns,
    TableFacts,
    extreme_aggregates,
    feature_expressions,
    infer_spark_roles,
    plan_from_spark,
    read_extremes,
    role_sample,
)
from anomaly_detection.spark.jobs.text_columns import convert_text_columns
from anomaly_detection.spark.jobs.timecontext import context_dir, write_spark_context

NAME = "preprocess"
#: Relative error of ``approxQuantile`` for the median fallback (exact up to this many rows).
MEDIAN_EXACT_ROWS = 200_000
MEDIAN_RELATIVE_ERROR = 1e-4


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """The job's entry point; ``spark``: an existing session to run in (see :func:`run_job`)."""
    args = parse_args("spark_jobs/preprocess.py", "Spark preprocessing of a run directory.", argv)
    return run_job(NAME, args, preprocess_job, spark=spark)


# --------------------------------------------------------------------------- the job


def preprocess_job(spark: Any, config: PipelineConfig, paths: RunPaths, log: logging.Logger) -> None:
    """Stage ``features.spark.parquet`` and ``data_summary.json``, publish both, then mark the job done.

    Starting removes this job's marker and outputs and every detect marker (their results came
    from the features this job replaces).
    """
    stage("check inputs")
    if not paths.flattened.exists():
        raise PipelineError(f"{paths.flattened} not found: run the ingest stage first")
    detect_markers = sorted(
        p.name[len("spark_") : -len(".done.json")] for p in paths.root.glob("spark_detect*.done.json")
    )
    with Outputs(paths, current_job()) as outputs:
        outputs.start(
            [paths.spark_features, paths.spark_duplicate_rows, paths.summary, context_dir(paths.root)]
            + [context_path(paths.root)],  # a native context of an earlier run in this directory
            invalidate=["detect", *detect_markers],
        )
        _preprocess(spark, config, paths, log, outputs)
        stage("publish")
        outputs.commit()


def _preprocess(
    spark: Any, config: PipelineConfig, paths: RunPaths, log: logging.Logger, outputs: Outputs
) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    started = time.perf_counter()
    processing = config.processing
    label = config.evaluation.label_column
    stage(f"read {paths.flattened.name}")
    dtypes = pandas_dtypes(paths.flattened)
    names = list(dtypes)
    col = {name: f"c{i}" for i, name in enumerate(names)}
    table = read_positioned(spark, paths.flattened, names)
    # numeric and ISO date-time text typed as the native flattening types it (bulk ingestion keeps text)
    table, dtypes, conversions = convert_text_columns(table, col, dtypes)
    for numeric, what in ((True, "numbers"), (False, "date-times")):
        if chosen := [n for n, c in conversions.items() if c.numeric == numeric]:
            log.info("text converted to %s as the native flattening does: %s", what, ", ".join(chosen))
    types = {n: table.schema[col[n]].dataType for n in names}
    floating = {n for n in names if isinstance(types[n], (DoubleType, FloatType))}
    columns = Columns(names, col, dtypes, types, floating)
    labels = _Label(label, col[label], dtypes[label], label in floating) if label in col else None

    # -- what the table looks like before anything is removed, and the label checks (one pass)
    before = table.agg(
        F.count(F.lit(1)).alias("_rows"),
        *(F.coalesce(F.sum(columns.missing(n).cast("long")), F.lit(0)).alias(col[n]) for n in names),
        *extreme_aggregates(columns),
        *(labels.aggregates() if labels is not None else []),
    ).first()
    before = before.asDict()
    rows_before = int(before["_rows"])
    summary: dict[str, Any] = {
        "rows_before": rows_before,
        "columns_before": len(names),
        "missing_per_column": {n: int(before[col[n]]) for n in names},
        "dtypes": {n: str(d) for n, d in dtypes.items()},
    }
    facts = TableFacts(rows_before, summary["missing_per_column"], read_extremes(columns, before))
    log.info("read %s: %d rows x %d columns", paths.flattened.name, rows_before, len(names))

    # -- duplicates: equal over every original column after the first occurrence; counted, all kept
    stage("find duplicates")
    rows_after = rows_before
    if names:
        first = F.row_number().over(Window.partitionBy(*(col[n] for n in names)).orderBy(POS)) == 1
    else:
        first = F.lit(True)
    kept = table.withColumn(FIRST, first).persist(StorageLevel.MEMORY_AND_DISK)
    write_parts(kept.where(~F.col(FIRST)).select(POS), outputs.path(paths.spark_duplicate_rows))
    duplicates = spark.read.parquet(str(outputs.path(paths.spark_duplicate_rows))).count()
    summary["duplicates"] = int(duplicates)
    if duplicates:
        log.info("%d row(s) repeat an earlier row; every row is scored", duplicates)
    if rows_after < MIN_ROWS:
        raise DataError(f"need at least {MIN_ROWS} rows to detect anomalies, got {rows_after}")
    if label and labels is None:
        raise DataError(f"label column {label!r} not found; columns are: {', '.join(names[:40])}")
    if labels is not None:
        labels.check(kept, before)

    # -- column roles (a bounded sample, corrected by whole-table aggregates) and the feature plan
    stage("select features")
    unknown = [c for c in processing.include_features if c not in col]
    if unknown:
        raise DataError(
            f"processing.include_features names unknown column(s) {unknown}; columns are: {', '.join(names[:40])}"
        )
    sample = role_sample(kept, columns, rows_after, config.modeling.random_state)
    ignored = {SOURCE_COLUMN: "source of the record", **({label: "label column"} if label else {})}
    roles, counts = infer_spark_roles(
        kept, sample, processing, columns, facts, ignored=ignored, distinct_rows=rows_after - duplicates
    )
    del sample
    dropped = {n: r.why_not_a_feature for n, r in roles.items() if r.role not in FEATURE_ROLES}
    fitted = plan_from_spark(kept, columns, roles, counts, facts, time_column=config.time.column)
    planned = fitted.plan.names
    rcols = [f"r{j}" for j in range(len(planned))]
    extra = [labels.expression.alias("_label")] if labels is not None else []
    raw = kept.select(POS, *(e.alias(r) for e, r in zip(feature_expressions(columns, fitted), rcols)), *extra)

    # -- the planned features' spread (one pass); those without spread are dropped
    stats = _feature_stats(raw, rcols)
    features, used = [], []
    for name, r in zip(planned, rcols):
        if stats[r]["finite"] == 0 or stats[r]["min"] == stats[r]["max"]:
            dropped[name] = fitted.plan.why_no_spread(name, stats[r]["min"] if stats[r]["finite"] else None)
        else:
            features.append(name)
            used.append(r)
    plan = fitted.plan.keep(set(features))
    log_feature_choice(features, dropped, summary["dtypes"])

    # -- +-inf to missing, MinMax scaling (min/max of the finite values, as numpy's nanmin/nanmax)
    n_infinite = sum(stats[r]["infinite"] for r in used)
    if n_infinite:
        first = next(n for n, r in zip(features, used) if stats[r]["infinite"])
        log.warning("%d infinite value(s) treated as missing (first in column %r)", n_infinite, first)
    n_missing = sum(rows_after - stats[r]["finite"] for r in used)
    minimum = [stats[r]["min"] for r in used]
    maximum = [stats[r]["max"] for r in used]
    fcols = [f"f{j}" for j in range(len(features))]
    scaled_cols = []
    for j, r in enumerate(used):
        value = F.col(r)
        finite = F.when(~(F.isnan(value) | value.isin(math.inf, -math.inf)), value)  # null stays null
        span = maximum[j] - minimum[j] if maximum[j] > minimum[j] else 1.0
        scaled_cols.append(((finite - F.lit(minimum[j])) / F.lit(span)).alias(fcols[j]))
    scaled = raw.select(POS, *scaled_cols, *(["_label"] if extra else []))

    # -- imputation
    stage("impute missing values")
    if processing.missing_values == "median" or not n_missing:
        if n_missing:
            filled_cols, method = _median_fill(scaled, fcols, rows_after), "median"
        else:
            filled_cols, method = [F.col(c) for c in fcols], "none needed"
    else:
        scaled = scaled.persist(StorageLevel.MEMORY_AND_DISK)
        scaled, filled_cols, method = _kmeans_fill(
            scaled, fcols, processing.imputation_clusters, config.modeling.random_state, rows_after, log
        )
    if n_missing:
        log.info("imputed %d missing value(s): %s", n_missing, method)
    out = scaled.select(
        POS, *(c.alias(name) for c, name in zip(filled_cols, fcols)), *(["_label"] if extra else [])
    )

    # -- write: Spark's part files, nothing through the driver (staged until the job is done)
    stage(f"write {paths.spark_features.name}")
    write_parts(out, outputs.path(paths.spark_features))
    summary.update(
        rows_after=int(rows_after),
        features=list(features),
        roles={
            name: {"role": r.role, "reason": r.reason, **({"unit": r.unit} if r.unit else {})}
            for name, r in roles.items()
        },
        feature_plan=plan.to_dict(),
        columns_dropped=dropped,
        imputed_values=int(n_missing),
        imputation=method,
        infinite_values=int(n_infinite),
        scaling={
            "method": "minmax",
            "min": dict(zip(features, minimum)),
            "max": dict(zip(features, maximum)),
        },
    )
    stage("time context")
    measures = [spec.column for spec in plan.specs if spec.kind == "measure"]
    summary["time_context"] = write_spark_context(
        kept, col, measures, config, lambda: outputs.path(context_dir(paths.root)), log
    )
    atomic.write_json(outputs.path(paths.summary), summary)
    log.info(
        "wrote %s (%d rows x %d features%s) and %s in %.1fs",
        paths.spark_features.name,
        rows_after,
        len(features),
        ", with labels" if extra else "",
        paths.summary.name,
        time.perf_counter() - started,
    )


def _feature_stats(raw: Any, rcols: list[str]) -> dict[str, dict[str, Any]]:
    """Each raw feature's finite count, finite min/max and number of +-inf values (one pass)."""
    from pyspark.sql import functions as F

    if not rcols:
        return {}
    aggregates = []
    for r in rcols:
        value = F.col(r)
        infinite = value.isin(math.inf, -math.inf)
        finite = ~(value.isNull() | F.isnan(value) | infinite)
        aggregates += [
            F.count(F.when(finite, 1)).alias(f"{r}_finite"),
            F.min(F.when(finite, value)).alias(f"{r}_min"),
            F.max(F.when(finite, value)).alias(f"{r}_max"),
            F.count(F.when(infinite, 1)).alias(f"{r}_inf"),
        ]
    agg = raw.agg(*aggregates).first().asDict()
    return {
        r: {
            "finite": int(agg[f"{r}_finite"]),
            "min": None if agg[f"{r}_min"] is None else float(agg[f"{r}_min"]),
            "max": None if agg[f"{r}_max"] is None else float(agg[f"{r}_max"]),
            "infinite": int(agg[f"{r}_inf"]),
        }
        for r in rcols
    }


# --------------------------------------------------------------------------- labels


class _Label:
    """The label column the way ``extract_labels`` reads it: its 0/1 expression, the aggregates that
    check it (computed in the job's first pass) and the same error messages."""

    def __init__(self, name: str, column: str, dtype: Any, floating: bool) -> None:
        from pyspark.sql import functions as F

        self.name = name
        self.value = F.col(column)
        self.missing = missing_expr(self.value, floating)
        if is_numeric_dtype(dtype):
            number = self.value.cast("double")
            self.bad = ~number.isin(0.0, 1.0)
            self.message = "label column {name!r} must hold 0/1 values; row {row} has {value!r}"
            self.expression = number.cast("byte")
        else:
            text = F.lower(F.regexp_replace(self.value.cast("string"), r"(?U)^\s+|\s+$", ""))
            self.bad = ~text.isin(*sorted(TRUE_TEXTS | FALSE_TEXTS))
            self.message = (
                "label column {name!r} must hold 0/1, true/false or normal/anomaly; row {row} has {value!r}"
            )
            self.expression = text.isin(*sorted(TRUE_TEXTS)).cast("byte")

    def aggregates(self) -> list[Any]:
        from pyspark.sql import functions as F

        return [
            F.count(F.when(self.missing, 1)).alias("_label_missing"),
            F.min(F.when(self.missing, F.col(POS))).alias("_label_first_missing"),
            F.count(F.when(~self.missing & self.bad, 1)).alias("_label_bad"),
        ]

    def check(self, kept: Any, agg: Mapping[str, Any]) -> None:
        if agg["_label_missing"]:
            count, first = agg["_label_missing"], agg["_label_first_missing"]
            raise DataError(f"label column {self.name!r} has {count} missing value(s), first at row {first}")
        if agg["_label_bad"]:
            row, value = kept.where(self.bad).orderBy(POS).select(POS, self.value).limit(1).collect()[0]
            raise DataError(self.message.format(name=self.name, row=row, value=value))


# --------------------------------------------------------------------------- imputation


def _median_fill(scaled: Any, fcols: list[str], rows: int) -> list[Any]:
    """Fill with the column medians (``approxQuantile``; exact up to ``MEDIAN_EXACT_ROWS`` rows).

    approxQuantile returns an observed value, so with an even count it picks one of the two middle
    values where numpy's nanmedian averages them.
    """
    from pyspark.sql import functions as F

    error = 0.0 if rows <= MEDIAN_EXACT_ROWS else MEDIAN_RELATIVE_ERROR
    medians = scaled.approxQuantile(fcols, [0.5], error)
    return [F.coalesce(F.col(c), F.lit(float(m[0]))) for c, m in zip(fcols, medians)]


def _kmeans_fill(
    scaled: Any, fcols: list[str], n_clusters: int, seed: int, rows: int, log: logging.Logger
) -> tuple[Any, list[Any], str]:
    """Fill each missing value with the matching coordinate of the nearest KMeans centroid.

    Returns the frame to select from, the filled column expressions and the method for the summary.

    The centroids come from pyspark.ml KMeans fitted on at most 50,000 complete rows; a row's nearest
    centroid is found with the squared distance over its observed coordinates only, as a Spark
    expression (no Python worker). Fewer than 20 complete rows: column medians instead.
    """
    from pyspark import StorageLevel
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    complete = scaled.where(functools.reduce(lambda a, b: a & b, (F.col(c).isNotNull() for c in fcols)))
    # each KMeans iteration runs one task per partition: a handful of partitions for the fit rows
    fit = VectorAssembler(inputCols=fcols, outputCol="_v").transform(complete).select("_v")
    fit = fit.coalesce(max(1, scaled.sparkSession.sparkContext.defaultParallelism)).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    n_complete = n_fit = fit.count()
    if n_complete < MIN_COMPLETE_ROWS_FOR_KMEANS:
        fit.unpersist()
        log.warning(
            "only %d complete rows (< %d): imputing missing values with column medians instead of KMeans",
            n_complete,
            MIN_COMPLETE_ROWS_FOR_KMEANS,
        )
        return scaled, _median_fill(scaled, fcols, rows), f"median fallback ({n_complete} complete rows)"
    if n_complete > IMPUTATION_FIT_SAMPLE:
        fraction = min(1.0, 1.05 * IMPUTATION_FIT_SAMPLE / n_complete)
        sample = fit.sample(withReplacement=False, fraction=fraction, seed=seed).limit(IMPUTATION_FIT_SAMPLE)
        sample = sample.persist(StorageLevel.MEMORY_AND_DISK)
        n_fit = sample.count()
        fit.unpersist()
        fit = sample
    k = max(1, min(n_clusters, n_fit // 5))
    model = KMeans(k=k, seed=seed, maxIter=300, featuresCol="_v").fit(fit)
    centroids = [[float(v) for v in center] for center in model.clusterCenters()]
    fit.unpersist()
    # squared distance to each centroid over the observed coordinates, then the first nearest
    # (1-based, ties to the lowest index like argmin); only rows with a missing value need it
    distances = [
        functools.reduce(
            lambda a, b: a + b,
            (
                F.when(F.col(c).isNotNull(), (F.col(c) - F.lit(center[j])) ** 2).otherwise(F.lit(0.0))
                for j, c in enumerate(fcols)
            ),
        )
        for center in centroids
    ]
    array = F.array(*distances)
    incomplete = functools.reduce(lambda a, b: a | b, (F.col(c).isNull() for c in fcols))
    nearest = F.when(incomplete, F.array_position(array, F.array_min(array)).cast("int"))
    # a column of its own: Spark keeps it computed once per row instead of inlining it into every
    # filled feature (which also grows the generated code past the JVM's 64 KB method limit)
    with_nearest = scaled.select("*", nearest.alias("_nearest"))
    filled = [
        F.coalesce(
            F.col(c), F.element_at(F.array(*(F.lit(center[j]) for center in centroids)), F.col("_nearest"))
        )
        for j, c in enumerate(fcols)
    ]
    return with_nearest, filled, f"kmeans ({len(centroids)} clusters on {n_fit} complete rows)"


# --------------------------------------------------------------------------- output


if __name__ == "__main__":
    sys.exit(main())
