"""Spark version of ``detect_stage("kmeans")``: pyspark.ml KMeans over the configured grid.

    spark-submit spark_jobs/detect.py --run-dir DIR --config DIR/config.resolved.yaml [--algorithm kmeans]

Reads ``features.parquet`` (written by the Spark or the native preprocessing) and writes
``models/kmeans.json`` (a list of ``ModelResult.to_dict()``) plus ``models/kmeans.scores.npy`` and
``models/kmeans.labels.npy`` for the best configuration, rows in kept-row order, exactly as
:func:`anomaly_detection.pipeline.detect_stage` does, so the native select stage picks it up.

For each ``n_clusters`` of ``modeling.grid_for("kmeans")`` (and ``init``, ``n_init``, ``max_iter``
when given): KMeans is fitted (seed ``modeling.random_state``) on at most ``fit_sample_size`` rows,
every row is scored by its Euclidean distance to its assigned (nearest) centroid with a Spark
expression, and the ``ceil(contamination * n)`` highest scores are labelled anomalies. That is an
exact top-k (ties at the threshold go to the lower row position), not ``approxQuantile``, so the
anomaly count is the native one.

Known limit of this first version: the evaluation is the native code
(:func:`anomaly_detection.evaluate.evaluate`, which takes numpy), so the driver reads the feature
matrix once and receives every configuration's scores and labels (9 bytes a row).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script by spark-submit: make ``spark_jobs`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from anomaly_detection.config import PipelineConfig
from anomaly_detection.detect import Detection
from anomaly_detection.errors import PipelineError
from anomaly_detection.evaluate import ModelResult, better, evaluate
from anomaly_detection.runs import RunPaths
from spark_jobs.common import POS, pandas_dtypes, parse_args, read_positioned, run_job, write_json

NAME = "detect"
#: sklearn's ``init`` values and their Spark ML ``initMode``.
INIT_MODES = {"k-means++": "k-means||", "random": "random"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args("spark_jobs/detect.py", "Spark KMeans detection over a run directory.", argv, algorithm=True)
    return run_job(f"{NAME}-{args.algorithm}", args, functools.partial(detect_job, algorithm=args.algorithm))


def detect_job(spark: Any, config: PipelineConfig, paths: RunPaths, log: logging.Logger, *, algorithm: str = "kmeans") -> None:
    from pyspark import StorageLevel
    from pyspark.ml.feature import VectorAssembler
    from sklearn.model_selection import ParameterGrid

    if algorithm != "kmeans":
        raise PipelineError(f"the Spark detect job supports only 'kmeans', got {algorithm!r}")
    if not paths.features.is_file():
        raise PipelineError(f"{paths.features} not found: run the preprocess job first")
    started = time.perf_counter()
    names = list(pandas_dtypes(paths.features))
    ccols = [f"c{i}" for i in range(len(names))]
    frame = read_positioned(spark, paths.features, names)
    data = VectorAssembler(inputCols=ccols, outputCol="_v").transform(frame).persist(StorageLevel.MEMORY_AND_DISK)
    n = data.count()
    log.info("read %s: %d rows x %d features", paths.features.name, n, len(names))

    # Known limit: the native evaluation takes numpy, so the matrix is read on the driver once.
    X = pd.read_parquet(paths.features).to_numpy(dtype=np.float64)
    y_true = np.load(paths.labels) if paths.labels.exists() else None
    modeling = config.modeling
    paths.models.mkdir(parents=True, exist_ok=True)
    results: list[ModelResult] = []
    best: ModelResult | None = None
    for params in ParameterGrid(modeling.grid_for(algorithm)):
        detection = spark_kmeans(
            data,
            ccols,
            n,
            params,
            contamination=modeling.contamination,
            random_state=modeling.random_state,
            fit_sample_size=modeling.fit_sample_size,
        )
        result = evaluate(
            X,
            detection,
            metric=config.evaluation.metric,
            y_true=y_true,
            sample_size=config.evaluation.silhouette_sample_size,
            random_state=modeling.random_state,
        )
        results.append(result)
        log.info(
            "%s %s: %d clusters fitted on %d rows, %d anomalies (%.2f%%) above %.4g, %s=%s, in %.2fs",
            algorithm,
            params,
            detection.info["n_clusters"],
            detection.info["fit_rows"],
            result.anomaly_count,
            100 * result.anomaly_share,
            detection.threshold,
            result.metric,
            result.score,
            detection.seconds,
        )
        if better(result, best):
            best = result
            np.save(paths.models / f"{algorithm}.scores.npy", detection.scores)
            np.save(paths.models / f"{algorithm}.labels.npy", detection.labels)
    data.unpersist()
    write_json(paths.models / f"{algorithm}.json", [r.to_dict() for r in results])
    assert best is not None
    log.info(
        "%s: best %s with %s=%s (%d configuration(s) in %.1fs)",
        algorithm,
        best.params,
        best.metric,
        best.score,
        len(results),
        time.perf_counter() - started,
    )


def spark_kmeans(
    data: Any,
    ccols: list[str],
    n: int,
    params: dict[str, Any],
    *,
    contamination: float,
    random_state: int,
    fit_sample_size: int,
) -> Detection:
    """One KMeans configuration on the assembled features ``data`` (columns ``_pos``, ``ccols``, ``_v``).

    Returns a native :class:`Detection` whose ``scores`` and ``labels`` are in row-position order.
    """
    from pyspark import StorageLevel
    from pyspark.ml.clustering import KMeans
    from pyspark.sql import functions as F

    started = time.perf_counter()
    init = params.get("init", "k-means++")
    if init not in INIT_MODES:
        raise PipelineError(f"kmeans init {init!r} is not available in Spark; use one of {sorted(INIT_MODES)}")
    n_init = params.get("n_init", "auto")
    runs = 1 if n_init == "auto" else max(1, int(n_init))
    fit, fit_rows = data, n  # ``data`` is cached
    if n > fit_sample_size:
        fraction = min(1.0, 1.05 * fit_sample_size / n)
        fit = data.sample(withReplacement=False, fraction=fraction, seed=random_state).limit(fit_sample_size)
        fit = fit.select("_v").persist(StorageLevel.MEMORY_AND_DISK)
        fit_rows = fit.count()
    k = max(1, min(int(params.get("n_clusters", 8)), fit_rows))
    model = None
    for run in range(runs):  # n_init: keep the lowest within-cluster cost, as sklearn does
        candidate = KMeans(
            k=k,
            seed=random_state + run,
            maxIter=int(params.get("max_iter", 300)),
            initMode=INIT_MODES[init],
            featuresCol="_v",
            predictionCol="_c",
        ).fit(fit)
        if model is None or candidate.summary.trainingCost < model.summary.trainingCost:
            model = candidate
    if fit is not data:
        fit.unpersist()
    centers = [[float(v) for v in center] for center in model.clusterCenters()]

    # distance to the assigned centroid, as a JVM expression (no Python worker)
    assigned = model.transform(data)
    index = (F.col("_c") + 1).cast("int")
    squares = [
        (F.col(c) - F.element_at(F.array(*(F.lit(center[j]) for center in centers)), index)) ** 2 for j, c in enumerate(ccols)
    ]
    distance = F.sqrt(functools.reduce(lambda a, b: a + b, squares))
    scored = assigned.select(POS, "_c", distance.alias("_score")).persist(StorageLevel.MEMORY_AND_DISK)

    # exact top-k: the k-th row in (score desc, position asc) order is the last one flagged
    top = min(n, max(1, math.ceil(contamination * n)))
    last = (
        scored.orderBy(F.desc("_score"), F.asc(POS))
        .limit(top)
        .agg(F.min(F.struct(F.col("_score"), (-F.col(POS)).alias("neg_pos"))))
        .first()[0]
    )
    threshold, last_pos = float(last["_score"]), -int(last["neg_pos"])
    flagged = (F.col("_score") > threshold) | ((F.col("_score") == threshold) & (F.col(POS) <= last_pos))
    labelled = scored.select(POS, "_c", "_score", F.when(flagged, 1).otherwise(0).cast("byte").alias("_label"))
    sizes = np.zeros(len(centers), dtype=np.int64)
    for cluster, count in labelled.groupBy("_c").count().collect():
        sizes[int(cluster)] = int(count)
    # Known limit: the scores and labels come to the driver (the .npy files and native evaluation).
    local = labelled.orderBy(POS).select(POS, "_score", "_label").toArrow()
    scored.unpersist()
    positions = local.column(POS).to_numpy()
    if len(positions) != n or not (positions == np.arange(n)).all():
        raise RuntimeError("scored rows do not match the rows of features.parquet")
    scores = local.column("_score").to_numpy().astype(np.float64, copy=False)
    labels = local.column("_label").to_numpy().astype(np.int8, copy=False)
    info = {
        "n_clusters": int((sizes > 0).sum()),
        "cluster_sizes": sizes.tolist(),
        "fit_rows": int(fit_rows),
        "iterations": int(model.summary.numIter),
        "engine": "spark",
    }
    return Detection("kmeans", dict(params), scores, labels, threshold, time.perf_counter() - started, info)


if __name__ == "__main__":
    sys.exit(main())
