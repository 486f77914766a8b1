"""Spark detection: pyspark.ml KMeans and Bisecting KMeans; scikit-learn's Isolation Forest, HBOS, ECOD
and the default ensemble scored with ``mapInPandas`` (:mod:`anomaly_detection.spark.jobs.members`),
over the configured grids.

    spark-submit spark_jobs/detect.py --run-dir DIR --config DIR/config.resolved.yaml [--algorithm NAME]

Reads ``features.spark.parquet`` (written by ``preprocess.py``) and, for every configured algorithm
that runs on Spark (``ensemble``, ``isolation_forest``, ``hbos``, ``ecod``, ``kmeans``,
``bisecting_kmeans``, ``time_series``; DBSCAN, kNN and LOF are skipped with a warning), writes
``models/<algorithm>.json`` (a list of ``ModelResult.to_dict()``) and, for its best configuration, the scored outputs of :mod:`anomaly_detection.detect.scored`: the flagged rows (position and
score, part files written by Spark) and a bounded report sample. They are what
:func:`anomaly_detection.pipeline.stages.detect_stage` writes, so the common select, report and review steps
read them unchanged.

For each configuration of ``modeling.grid_for(algorithm)``, everything below runs distributed (the
threshold and the metrics of the split are in :mod:`anomaly_detection.spark.jobs.metrics`):

* KMeans / Bisecting KMeans are fitted (seed ``modeling.random_state``) on at most
  ``fit_sample_size`` rows, and every row's score is its Euclidean distance to the nearest centroid,
  a JVM expression;
* Isolation Forest is fitted at the driver on at most ``min(fit_sample_size, spark.sample_size)``
  sampled rows, broadcast, and scores every row on the executors (``-score_samples``); HBOS, ECOD and
  the ensemble: :mod:`anomaly_detection.spark.jobs.members`;
* the threshold is ``approxQuantile(score, 1 - top/n)`` with ``top = ceil(contamination * n)``, so
  about ``top`` rows score above it (exactly ``top`` up to ties while ``n * QUANTILE_ERROR < 1``);
  ``contamination: auto`` is the native mixture cut
  (:func:`~anomaly_detection.spark.jobs.metrics.spark_threshold`);
* silhouette of the anomaly/normal split, ClusteringEvaluator's squared-Euclidean definition (equal to
  scikit-learn's with ``metric="sqeuclidean"``) over every row in linear time, computed in closed form
  from the group sums (ClusteringEvaluator itself took 8x longer); Davies-Bouldin and
  Calinski-Harabasz from the same sums (:func:`anomaly_detection.detect.evaluate.split_metrics_from_aggregates`,
  equal to scikit-learn's);
* with a time context (``context.spark.parquet``, :mod:`anomaly_detection.spark.jobs.timecontext`),
  each row's largest context score is joined by ``_pos``: ``time_series`` flags it above the fence,
  and the ensemble is joined with the time view as natively (``join_context``);
* with a label column, ROC-AUC and PR-AUC from ``BinaryClassificationEvaluator`` on the score, and
  precision, recall and F1 from the confusion counts.

Only aggregates and bounded samples reach the driver: the fit samples, at most 20,000 scores for
``contamination: auto`` (and for the ensemble's ``member_agreement``), and the report sample of at
most ``report.plot_sample_size + report.top_anomalies`` rows.

The job needs the preprocess job's completion marker. It first removes its own marker (and, run for
one algorithm, the all-algorithm ``detect`` marker) and the earlier outputs of the algorithms it runs;
it stages every output (:class:`anomaly_detection.spark.jobs.common.Outputs`) and publishes them only when all
algorithms are done: the flagged rows and samples first, the ``models/<algorithm>.json`` files that
select reads next, the marker ``spark_detect.done.json`` last. Killed midway, it leaves no
``models/<algorithm>.json`` of its algorithms and no marker.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection import atomic
from anomaly_detection.config import PipelineConfig
from anomaly_detection.detect.evaluate import (
    MAX_SANE_SHARE,
    ModelResult,
    better,
)
from anomaly_detection.detect.scored import (
    feature_column,
    flagged_path,
    sample_path,
    sample_table,
    write_table,
)
from anomaly_detection.errors import PipelineError
from anomaly_detection.features.context import UNJUDGED, follows_every_feature
from anomaly_detection.features.derive import feature_plan
from anomaly_detection.runs import RunPaths
from anomaly_detection.spark.jobs.common import (
    POS,
    SPARK_ALGORITHMS,
    Outputs,
    current_job,
    parse_args,
    run_job,
    stage,
    write_parts,
)
from anomaly_detection.spark.jobs.members import (
    ecod_scores,
    ensemble_scores,
    hbos_scores,
    isolation_forest_scores,
)
from anomaly_detection.spark.jobs.metrics import spark_cut, spark_threshold, split_metrics
from anomaly_detection.spark.jobs.timecontext import (
    CTX,
    join_time_view,
    read_context_scores,
    time_series_scored,
)
from anomaly_detection.spark.submit import require_complete

NAME = "detect"
#: sklearn's ``init`` values and their Spark ML ``initMode``.
INIT_MODES = {"k-means++": "k-means||", "random": "random"}


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """The job's entry point; ``spark``: an existing session to run in (see :func:`run_job`)."""
    args = parse_args(
        "spark_jobs/detect.py", "Spark anomaly detection over a run directory.", argv, algorithm=True
    )
    name = f"{NAME}-{args.algorithm}" if args.algorithm else NAME
    return run_job(name, args, functools.partial(detect_job, algorithm=args.algorithm), spark=spark)


def detect_job(
    spark: Any, config: PipelineConfig, paths: RunPaths, log: logging.Logger, *, algorithm: str | None = None
) -> None:
    stage("check inputs")
    configured = config.modeling.algorithms
    algorithms = [algorithm] if algorithm else [a for a in configured if a in SPARK_ALGORITHMS]
    skipped = [a for a in configured if a not in SPARK_ALGORITHMS and not algorithm]
    if skipped:
        log.warning(
            "not available on the Spark path, skipped: %s (Spark runs %s)",
            ", ".join(skipped),
            ", ".join(SPARK_ALGORITHMS),
        )
    if not algorithms:
        raise PipelineError(
            f"none of the configured algorithms ({', '.join(configured)}) runs on Spark; "
            f"add {' or '.join(SPARK_ALGORITHMS)} to modeling.algorithms"
        )
    require_complete(paths.root, "preprocess")
    if not paths.spark_features.is_dir() or not paths.summary.is_file():
        raise PipelineError(f"{paths.spark_features} not found: run the Spark preprocess job first")
    job = current_job()
    finals = [
        path for name in algorithms
        for path in (flagged_path(paths.models, name), sample_path(paths.models, name), paths.models / f"{name}.json")
    ]  # fmt: skip
    invalidate = ["detect"] if algorithm else [f"{NAME}-{name}" for name in algorithms]
    with Outputs(paths, job) as outputs:
        outputs.start(finals, invalidate=invalidate)
        _detect(spark, config, paths, log, algorithms, outputs)
        stage("publish")
        outputs.commit(algorithms=list(algorithms))


def _detect(
    spark: Any,
    config: PipelineConfig,
    paths: RunPaths,
    log: logging.Logger,
    algorithms: list[str],
    outputs: Outputs,
) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from sklearn.model_selection import ParameterGrid

    stage(f"read {paths.spark_features.name}")
    started = time.perf_counter()
    summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    names = list(summary["features"])
    gate = follows_every_feature([spec.kind for spec in feature_plan(summary).specs])
    ccols = [f"c{i}" for i in range(len(names))]
    stored = spark.read.parquet(str(paths.spark_features))
    with_labels = "_label" in stored.columns
    frame = stored.select(
        POS,
        *(F.col(feature_column(j)).alias(c) for j, c in enumerate(ccols)),
        *([F.col("_label").alias("_y")] if with_labels else []),
    )
    context = read_context_scores(spark, paths.root)
    if context is not None:  # every row's largest time context score, by position
        frame = frame.join(context, POS, "left").fillna(UNJUDGED, subset=[CTX])
    data = frame.persist(StorageLevel.MEMORY_AND_DISK)
    n = data.count()
    sample = FitSample(
        data,
        ccols,
        n,
        size=config.modeling.fit_sample_size,
        seed=config.modeling.random_state,
        # only with repeated rows: dropDuplicates shuffles the sample, which moves KMeans' start
        distinct=config.processing.fit_on_distinct_rows and summary.get("duplicates", 0) > 0,
    )
    log.info(
        "read %s: %d rows x %d features%s",
        paths.spark_features.name,
        n,
        len(names),
        ", with labels" if with_labels else "",
    )
    modeling = config.modeling
    results_of: dict[str, list[ModelResult]] = {}
    for name in algorithms:
        clock = time.perf_counter()
        results: list[ModelResult] = []
        best: ModelResult | None = None
        best_scored = None
        for params in ParameterGrid(modeling.grid_for(name)):
            stage(f"tune {name} {params}")
            scored, result = tune_one(
                data, sample, ccols, n, name, params, config=config, with_labels=with_labels, gate=gate
            )
            results.append(result)
            log.info(
                "%s %s: %d clusters fitted on %d rows, %d anomalies (%.2f%%) above %.4g, %s=%s, in %.2fs",
                name,
                params,
                result.info["n_clusters"],
                result.info["fit_rows"],
                result.anomaly_count,
                100 * result.anomaly_share,
                result.threshold,
                result.metric,
                result.score,
                result.seconds,
            )
            if better(result, best):
                if best_scored is not None:
                    best_scored.unpersist()
                best, best_scored = result, scored
            else:
                scored.unpersist()  # a no-op for the uncached centroid scores
        assert best is not None and best_scored is not None
        stage(f"write {name} outputs")
        save_best(best_scored, best.threshold, n, ccols, outputs, paths.models, name, config=config)
        best_scored.unpersist()
        results_of[name] = results
        log.info(
            "%s: best %s with %s=%s (%d configuration(s) in %.1fs)",
            name,
            best.params,
            best.metric,
            best.score,
            len(results),
            time.perf_counter() - clock,
        )
    sample.unpersist()
    data.unpersist()
    # the index select reads, staged after every algorithm's rows: published after them
    for name, results in results_of.items():
        atomic.write_json(outputs.path(paths.models / f"{name}.json"), [r.to_dict() for r in results])
    log.info("Spark detection done in %.1fs", time.perf_counter() - started)


class FitSample:
    """One uniform random sample of at most ``size`` rows, drawn once per job and cached: every
    KMeans / Bisecting KMeans configuration is fitted on it, the Isolation Forest (alone and in the
    ensemble, whose kNN reference is drawn from the same rows) and ECOD on its head.

    With ``distinct`` the sample keeps each distinct feature vector once (``dropDuplicates`` on the
    sampled rows), so the copies of a repeated record do not weigh in the fit; every row, copies
    included, is still scored and counted."""

    def __init__(
        self, data: Any, ccols: list[str], n: int, *, size: int, seed: int, distinct: bool = True
    ) -> None:
        from pyspark import StorageLevel
        from pyspark.ml.feature import VectorAssembler

        rows = data.select(POS, *ccols)
        if n > size:
            rows = rows.sample(withReplacement=False, fraction=min(1.0, 1.05 * size / n), seed=seed).limit(
                size
            )
        if distinct:
            rows = rows.dropDuplicates(ccols)
        self.frame = (
            VectorAssembler(inputCols=ccols, outputCol="_v")
            .transform(rows)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        self.rows = self.frame.count()
        self.ccols = ccols
        self.distinct = distinct

    def head_with_positions(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """At most ``size`` sampled rows at the driver, in position order (whatever order Spark's
        tasks return them in): their positions and features. A sample of every row is then the
        native matrix itself, and a seeded fit on it the native fit."""
        rows = self.frame.select(POS, *self.ccols).limit(size).toPandas().sort_values(POS, kind="stable")
        return rows[POS].to_numpy(dtype=np.int64), rows[self.ccols].to_numpy(dtype=np.float64)

    def unpersist(self) -> None:
        self.frame.unpersist()


def fit_centroids(
    sample: FitSample, algorithm: str, params: dict[str, Any], *, random_state: int
) -> tuple[list[list[float]], dict[str, Any]]:
    """Fit ``algorithm`` (pyspark.ml) on the job's fit sample; return its centres."""
    from pyspark.ml.clustering import BisectingKMeans, KMeans

    fit, fit_rows = sample.frame, sample.rows
    k = max(1, min(int(params.get("n_clusters", 8)), fit_rows))
    max_iter = int(params.get("max_iter", 300 if algorithm == "kmeans" else 20))
    if algorithm == "kmeans":
        init = params.get("init", "k-means++")
        if init not in INIT_MODES:
            raise PipelineError(
                f"kmeans init {init!r} is not available in Spark; use one of {sorted(INIT_MODES)}"
            )
        n_init = params.get("n_init", "auto")
        runs = 1 if n_init == "auto" else max(1, int(n_init))
        model = None
        for run in range(runs):  # n_init: keep the lowest within-cluster cost, as sklearn does
            candidate = KMeans(
                k=k,
                seed=random_state + run,
                maxIter=max_iter,
                initMode=INIT_MODES[init],
                featuresCol="_v",
                predictionCol="_c",
            ).fit(fit)
            if model is None or candidate.summary.trainingCost < model.summary.trainingCost:
                model = candidate
    elif algorithm == "bisecting_kmeans":
        if params.get("bisecting_strategy", "biggest_inertia") != "biggest_inertia":
            raise PipelineError(
                "bisecting_kmeans on Spark splits the cluster with the largest cost: use bisecting_strategy biggest_inertia"
            )
        model = BisectingKMeans(
            k=k, seed=random_state, maxIter=max_iter, featuresCol="_v", predictionCol="_c"
        ).fit(fit)
    else:
        raise PipelineError(f"{algorithm!r} does not run on Spark; use one of {', '.join(SPARK_ALGORITHMS)}")
    centers = [[float(v) for v in center] for center in model.clusterCenters()]
    return centers, {"fit_rows": int(fit_rows), "iterations": int(getattr(model.summary, "numIter", 0) or 0)}


def centroid_scores(data: Any, keep: list[str], ccols: list[str], centers: list[list[float]]) -> Any:
    """``keep`` plus ``_score``, the Euclidean distance to the nearest of ``centers``, and ``_c``, that
    centre's 1-based index (ties: the lower index). Each squared distance is computed once per row,
    as a column of its own; the score is the square root of their least."""
    from pyspark.sql import functions as F

    dcols = [f"_d{i}" for i in range(1, len(centers) + 1)]
    squared = [
        functools.reduce(
            lambda a, b: a + b, [(F.col(c) - F.lit(center[j])) ** 2 for j, c in enumerate(ccols)]
        ).alias(d)
        for d, center in zip(dcols, centers)
    ]
    least = F.least(*map(F.col, dcols)) if len(dcols) > 1 else F.col(dcols[0])
    nearest = F.coalesce(*(F.when(F.col(d) == F.col("_m"), F.lit(i)) for i, d in enumerate(dcols, start=1)))
    return (
        data.select(*keep, *squared)
        .select(*keep, *dcols, least.alias("_m"))
        .select(*keep, F.sqrt("_m").alias("_score"), nearest.alias("_c"))
    )


def tune_one(
    data: Any,
    sample: FitSample,
    ccols: list[str],
    n: int,
    algorithm: str,
    params: dict[str, Any],
    *,
    config: PipelineConfig,
    with_labels: bool,
    gate: bool = True,
) -> tuple[Any, ModelResult]:
    """Fit, score and evaluate one configuration. Returns the scored rows (``_score``) and the result.

    Centroid scores are a JVM expression recomputed by each pass (cheaper than caching a copy of
    the rows); Isolation Forest, HBOS and ensemble scores are Python work
    (:mod:`anomaly_detection.spark.jobs.members`), so their scored rows are cached.
    """
    from pyspark.sql import functions as F

    started = time.perf_counter()
    modeling = config.modeling
    keep = [POS, *ccols, *(["_y"] if with_labels else []), *([CTX] if CTX in data.columns else [])]
    centers = 0
    fixed = None
    if algorithm == "time_series":
        scored, fixed, info = time_series_scored(data, keep, params)
    elif algorithm == "isolation_forest":
        scored, info = isolation_forest_scores(data, sample, ccols, keep, params, config=config)
    elif algorithm == "hbos":
        scored, info = hbos_scores(data, ccols, keep, params, n)
    elif algorithm == "ecod":
        scored, info = ecod_scores(data, sample, ccols, keep, params, config=config)
    elif algorithm == "ensemble":
        scored, info = ensemble_scores(data, sample, ccols, keep, params, config=config)
    else:
        fitted, info = fit_centroids(sample, algorithm, params, random_state=modeling.random_state)
        info["fit_seconds"] = round(time.perf_counter() - started, 3)
        scored = centroid_scores(data, keep, ccols, fitted)
        centers = len(fitted)
    clock = time.perf_counter()
    if fixed is not None:
        threshold = fixed
    elif algorithm == "ensemble" and CTX in data.columns:  # joined with the time view (join_context)
        threshold, grouped = spark_cut(scored, n, modeling.contamination, info, seed=modeling.random_state)
        joined, fixed = join_time_view(
            scored, threshold, grouped, modeling.contamination, info, keep, gate=gate
        )
        threshold = fixed if fixed is not None else spark_threshold(joined, n, modeling.contamination, info)
        scored = joined
    else:
        threshold = spark_threshold(scored, n, modeling.contamination, info, seed=modeling.random_state)
    info["threshold_seconds"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    flagged = scored.withColumn("_a", (F.col("_score") > F.lit(threshold)).cast("int"))
    metrics, stats = split_metrics(flagged, ccols, n, centers=centers, with_labels=with_labels)
    info["metrics_seconds"] = round(time.perf_counter() - clock, 3)
    if centers:
        info["n_clusters"] = stats["clusters"]  # clusters that hold rows
    info.update(
        engine="spark",
        silhouette_method="closed-form squared Euclidean, all rows (ClusteringEvaluator's definition)",
    )
    count = int(stats["anomalies"])
    flags = []
    if count == 0:
        flags.append("anomaly share is 0%")
    elif count / n > MAX_SANE_SHARE:
        flags.append(f"anomaly share {count / n:.0%} is above {MAX_SANE_SHARE:.0%}")
    if stats["score_min"] == stats["score_max"]:
        flags.append("degenerate: every row has the same score")
    if centers and info["n_clusters"] == 1 and int(params.get("n_clusters", 2)) > 1:
        flags.append("single cluster: fewer distinct rows than clusters asked for")
    metric = config.evaluation.metric
    if metrics[metric] is None and count:
        flags.append(f"{metric} undefined for this split")
    result = ModelResult(
        algorithm=algorithm,
        params=dict(params),
        metric=metric,
        score=metrics[metric],
        silhouette=metrics["silhouette"],
        davies_bouldin=metrics["davies_bouldin"],
        calinski_harabasz=metrics["calinski_harabasz"],
        anomaly_count=count,
        anomaly_share=count / n,
        threshold=threshold,
        seconds=round(time.perf_counter() - started, 4),
        flags=flags,
        roc_auc=metrics.get("roc_auc"),
        pr_auc=metrics.get("pr_auc"),
        precision=metrics.get("precision"),
        recall=metrics.get("recall"),
        f1=metrics.get("f1"),
        info=info,
    )
    return scored, result


def save_best(
    scored: Any,
    threshold: float,
    n: int,
    ccols: list[str],
    outputs: Outputs,
    models: Path,
    algorithm: str,
    *,
    config: PipelineConfig,
) -> None:
    """Stage the best configuration's flagged rows (Spark part files) and its report sample
    (published to ``models`` when the job is done).

    The sample is a uniform random sample of at most ``report.plot_sample_size`` rows plus the
    ``report.top_anomalies`` highest-scoring rows, the only rows that reach the driver.
    """
    from pyspark.sql import functions as F

    flagged = scored.where(F.col("_score") > F.lit(threshold)).select(
        F.col(POS).cast("long").alias("position"),
        F.col("_score").cast("double").alias("score"),
        *(F.col(c).alias(feature_column(j)) for j, c in enumerate(ccols)),
    )
    write_parts(flagged, outputs.path(flagged_path(models, algorithm)))

    report = config.report
    columns = [F.col(POS).alias("position"), F.col("_score").alias("score"), *(F.col(c) for c in ccols)]
    random_rows = scored
    if n > report.plot_sample_size:
        fraction = min(1.0, 1.1 * report.plot_sample_size / n)
        random_rows = scored.sample(
            withReplacement=False, fraction=fraction, seed=config.modeling.random_state
        )
    random_rows = random_rows.select(*columns).limit(report.plot_sample_size).toPandas()
    top = (
        scored.where(F.col("_score") > F.lit(threshold))
        .select(*columns)
        .orderBy(F.col("_score").desc(), F.col(POS))
        .limit(report.top_anomalies)
        .toPandas()
    )
    random_rows["sampled"] = True
    top["sampled"] = False
    sample = pd.concat(
        [random_rows, top[~top["position"].isin(random_rows["position"])]], ignore_index=True
    ).sort_values("position")
    write_table(
        sample_table(
            sample["position"].to_numpy(),
            sample["score"].to_numpy(),
            (sample["score"].to_numpy() > threshold).astype(np.int8),
            sample["sampled"].to_numpy(),
            sample[ccols].to_numpy(dtype=np.float64),
        ),
        outputs.path(sample_path(models, algorithm)),
    )


if __name__ == "__main__":
    sys.exit(main())
