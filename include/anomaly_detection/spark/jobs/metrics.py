"""How good one anomaly/normal split of the Spark detect job is, from aggregates: the score threshold
(``approxQuantile``; for ``contamination: auto`` the native mixture cut, fitted on a bounded sample
of the scores) and the internal metrics (silhouette, Davies-Bouldin, Calinski-Harabasz) and label
metrics of the split.

Used by :mod:`anomaly_detection.spark.jobs.detect` for every configuration it tunes; only aggregates
and at most :data:`~anomaly_detection.detect.threshold.MIXTURE_SAMPLE` scores reach the driver.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from anomaly_detection.detect.evaluate import split_metrics_from_aggregates

#: Relative error of the threshold's ``approxQuantile``.
QUANTILE_ERROR = 1e-4


def split_metrics(
    flagged: Any, ccols: list[str], n: int, *, centers: int, with_labels: bool
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Internal metrics of the anomaly/normal split ``_a`` (and label metrics), from two aggregate passes.

    Pass 1 sums each group's rows, feature vectors and squared norms (and counts the clusters that
    hold rows, and the labels). Pass 2 needs the group centroids: the mean distance of each group
    to its centroid (Davies-Bouldin) and the silhouette. The silhouette is ClusteringEvaluator's
    (squared Euclidean): a row's mean squared distance to a group is
    ``||x||^2 - 2 x.sum_g / n_g + sq_g / n_g``, so it needs no pairwise distances; ClusteringEvaluator
    itself computes the same in about eight times the time here (25 s against 3 s a pass at 1M rows).
    """
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.sql import functions as F

    a = F.col("_a")
    squared_norm = functools.reduce(lambda x, y: x + y, [F.col(c) * F.col(c) for c in ccols])
    aggregates = [
        F.coalesce(F.sum(a), F.lit(0)).alias("anomalies"),
        F.min("_score").alias("score_min"),
        F.max("_score").alias("score_max"),
        *(F.sum(F.when(a == g, squared_norm)).alias(f"sq{g}") for g in (0, 1)),
        *(F.sum(F.when(a == g, F.col(c))).alias(f"s{g}_{c}") for g in (0, 1) for c in ccols),
        *(F.max(F.when(F.col("_c") == i, 1)).alias(f"c{i}") for i in range(1, centers + 1)),
    ]
    if with_labels:
        aggregates += [F.sum("_y").alias("positives"), F.sum(F.col("_y") * a).alias("hits")]
    row = flagged.agg(*aggregates).first()
    anomalies = int(row["anomalies"])
    counts = np.array([n - anomalies, anomalies], dtype=np.float64)
    sums = np.array([[row[f"s{g}_{c}"] or 0.0 for c in ccols] for g in (0, 1)], dtype=np.float64)
    squared = np.array([row[f"sq{g}"] or 0.0 for g in (0, 1)], dtype=np.float64)
    stats = {
        "anomalies": anomalies,
        "score_min": row["score_min"],
        "score_max": row["score_max"],
        "clusters": sum(1 for i in range(1, centers + 1) if row[f"c{i}"]),
    }
    metrics: dict[str, float | None] = {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    if (counts > 0).all():
        centroids = sums / counts[:, None]

        def per_group(values: np.ndarray) -> Any:
            return F.when(a == 1, F.lit(float(values[1]))).otherwise(F.lit(float(values[0])))

        def other_group(values: np.ndarray) -> Any:
            return F.when(a == 1, F.lit(float(values[0]))).otherwise(F.lit(float(values[1])))

        to_centroid = F.sqrt(
            functools.reduce(
                lambda x, y: x + y,
                [(F.col(c) - per_group(centroids[:, j])) ** 2 for j, c in enumerate(ccols)],
            )
        )

        def mean_squared_distance(which: Any) -> Any:
            dot = functools.reduce(
                lambda x, y: x + y, [F.col(c) * which(centroids[:, j]) for j, c in enumerate(ccols)]
            )
            return squared_norm - 2 * dot + which(squared / counts)

        own_size = per_group(counts)
        own = mean_squared_distance(per_group) * own_size / (own_size - 1)
        other = mean_squared_distance(other_group)
        silhouette_row = (
            F.when(own_size <= 1, F.lit(0.0))
            .when(own < other, 1 - own / other)
            .when(own > other, other / own - 1)
            .otherwise(F.lit(0.0))
        )
        second = flagged.agg(
            *(F.avg(F.when(a == g, to_centroid)).alias(f"m{g}") for g in (0, 1)),
            F.avg(silhouette_row).alias("silhouette"),
        ).first()
        metrics.update(
            split_metrics_from_aggregates(counts, sums, squared, np.array([second["m0"], second["m1"]]))
        )
        silhouette = second["silhouette"]
        metrics["silhouette"] = (
            float(silhouette) if silhouette is not None and math.isfinite(silhouette) else None
        )
    if with_labels:
        positives = int(row["positives"] or 0)
        hits = int(row["hits"] or 0)
        if 0 < positives < n:
            labelled = flagged.select(
                F.col("_score").alias("rawPrediction"), F.col("_y").cast("double").alias("label")
            )
            evaluator = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction", labelCol="label")
            metrics["roc_auc"] = float(evaluator.setMetricName("areaUnderROC").evaluate(labelled))
            metrics["pr_auc"] = float(evaluator.setMetricName("areaUnderPR").evaluate(labelled))
            precision = hits / anomalies if anomalies else 0.0
            recall = hits / positives
            metrics["precision"], metrics["recall"] = precision, recall
            metrics["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return metrics, stats


def spark_threshold(
    scored: Any, n: int, contamination: float | str, info: dict[str, Any], *, seed: int = 0
) -> float:
    """The score above which rows are anomalies (``_score > threshold``).

    A fixed share: the top ``contamination`` share by ``approxQuantile``. ``"auto"``: the native rule
    of :func:`anomaly_detection.detect.threshold.cut_scores`, fitted on a seeded sample of at most
    :data:`~anomaly_detection.detect.threshold.MIXTURE_SAMPLE` scores collected at the driver
    (:func:`~anomaly_detection.detect.threshold.mixture_cut`); the rows at or above the cut are
    counted over every row and the share clipped to [``MIN_SHARE``, ``MAX_SHARE``] by
    ``approxQuantile``, by the same case analysis (:func:`~anomaly_detection.detect.threshold.auto_case`).
    ``info["threshold_rule"]`` gets the words the native cut gives.
    """
    return spark_cut(scored, n, contamination, info, seed=seed)[0]


def spark_cut(
    scored: Any, n: int, contamination: float | str, info: dict[str, Any], *, seed: int = 0
) -> tuple[float, bool]:
    """:func:`spark_threshold` and whether ``auto`` found a separate upper group (``Cut.grouped``)."""
    from pyspark.sql import functions as F

    from anomaly_detection.detect.threshold import MIXTURE_SAMPLE, auto_case, mixture_cut

    if contamination == "auto":
        cut = mixture_cut(score_sample(scored, n, MIXTURE_SAMPLE, seed=seed), seed=seed)
        above = 0 if cut is None else scored.where(F.col("_score") >= F.lit(cut)).count()
        top, info["threshold_rule"] = auto_case(cut, above, n)
        if top is None:  # the rows scoring at least the cut: strictly above the next double below it
            return float(np.nextafter(cut, -np.inf)), True
    else:
        top = math.ceil(float(contamination) * n)
    top = min(n, max(1, top))
    grouped = contamination == "auto" and cut is not None
    return (
        float(scored.approxQuantile("_score", [1.0 - top / n], QUANTILE_ERROR)[0]) if top < n else -math.inf
    ), grouped


def score_sample(scored: Any, n: int, size: int, *, seed: int) -> np.ndarray:
    """A seeded uniform sample of at most ``size`` of the ``_score`` column at the driver, in position
    order (``_pos``), whatever order Spark's tasks return rows in. With ``n <= size`` it is the native
    array of scores; above, when the positions are the rows' indices ``0 .. n - 1``, it is the rows
    of :func:`~anomaly_detection.detect.threshold.mixture_sample`, the native sample; so the mixture
    fitted on it is the native one."""
    from pyspark.sql import functions as F

    from anomaly_detection.detect.threshold import MIXTURE_SAMPLE, mixture_sample
    from anomaly_detection.spark.jobs.common import POS

    rows = scored.select(POS, "_score")
    positions = mixture_sample(n, seed) if size == MIXTURE_SAMPLE else None
    if positions is not None and rows.agg(F.max(POS)).first()[0] == n - 1:
        rows = rows.where(F.col(POS).isin(positions.tolist()))  # positions 0..n-1: the native sample
    elif n > size:
        rows = rows.sample(withReplacement=False, fraction=min(1.0, 1.1 * size / n), seed=seed).limit(size)
    pairs = np.array(rows.collect(), dtype=np.float64).reshape(-1, 2)
    return pairs[np.argsort(pairs[:, 0], kind="stable"), 1]
