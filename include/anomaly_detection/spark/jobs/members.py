"""The Spark detectors scored in Python on the executors (``mapInPandas``): Isolation Forest, HBOS,
ECOD and the default ensemble (Isolation Forest + HBOS + kNN distance), with the native scoring code.

* **Isolation Forest**: scikit-learn's, fitted at the driver on at most
  ``min(fit_sample_size, spark.sample_size)`` rows of the job's fit sample, broadcast, and scoring every
  row (``-score_samples``). With every row in the fit sample, in position order, the forest and its
  scores are the native ones.
* **HBOS**: per feature, equal-width histograms over *every* row, as the native ``histogram_scores``:
  the minimum and maximum from one aggregate pass, the bin counts from a second (for each inner edge,
  the rows at or above it: the bins of ``np.histogram``), the densities and the scoring
  (:func:`anomaly_detection.detect.detectors.hbos.score_histograms`, same ``ALPHA`` and
  ``TOLERANCE``) as natively: the same scores up to float rounding.
* **ECOD**: the empirical distributions of the Isolation Forest's fit rows, broadcast, and the
  native tail scores (with every row in the fit rows, the native scores).
* **ensemble**: the three members of :func:`anomaly_detection.detect.detectors.ensemble.ensemble`:
  a default Isolation Forest (as above), HBOS (as above, ``n_bins``) and the distance to the
  ``n_neighbors``-th nearest row of a seeded uniform reference of at most ``reference_rows`` rows,
  drawn at the driver from the Isolation Forest's fit rows (brute force on the executors; a row in
  the reference, known by its position ``_pos``, does not count itself). Each member is robustly
  standardised, ``(s - median) / (1.4826 MAD)`` with the fallbacks of
  :func:`~anomaly_detection.detect.detectors.base.robust_standardise`, the median and the MAD from
  ``approxQuantile`` with relative error :data:`MEDIAN_ERROR` (a rank error of at most 0.1 % of the
  rows: at the dense centre of the scores a negligible shift of the z-scores); the score is their
  maximum, a JVM expression over the cached members.

Only bounded samples reach the driver: the fit rows, the histogram counts, the quantiles, and at most
:data:`AGREEMENT_SAMPLE` rows of member scores for ``member_agreement``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomaly_detection.config import PipelineConfig
from anomaly_detection.detect.detectors.base import sample_indices
from anomaly_detection.detect.detectors.hbos import bin_edges, log_density, score_histograms
from anomaly_detection.spark.jobs.common import POS

#: Relative error of the ``approxQuantile`` of each member's median and MAD.
MEDIAN_ERROR = 1e-3
#: Rows of member scores the Spearman correlations of ``member_agreement`` are computed on, at most.
AGREEMENT_SAMPLE = 20_000
#: Rows the kNN member measures against the reference at a time (bounds a task's memory).
KNN_CHUNK = 4096
MEMBERS = ("_m_forest", "_m_hbos", "_m_knn")


def _forest(X: np.ndarray, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import IsolationForest

    fitted = dict(params)
    if isinstance(fitted.get("max_samples"), int):
        fitted["max_samples"] = min(fitted["max_samples"], len(X))
    return IsolationForest(random_state=seed, n_jobs=1, **fitted).fit(X)


def _forest_rows(sample: Any, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions and features of the forest's fit rows (``min(fit_sample_size, spark.sample_size)``)."""
    return sample.head_with_positions(min(config.modeling.fit_sample_size, config.spark.sample_size))


def _python_scored(data: Any, keep: list[str], columns: list[str], score: Any) -> Any:
    """``data[keep]`` plus the float columns ``columns`` that ``score(batch) -> dict`` computes."""
    from pyspark.sql import functions as F

    rows = data.select(*keep)
    schema = rows.select(*keep, *(F.lit(0.0).alias(c) for c in columns)).schema

    def run(batches):
        for batch in batches:
            yield batch.assign(**score(batch))

    return rows.mapInPandas(run, schema=schema)


def _persisted(frame: Any) -> Any:
    from pyspark import StorageLevel

    # on local disk, where the OS page cache keeps it: a second copy of every row in the heap
    # is what ran a 3 GiB driver out of memory at 10M rows
    return frame.persist(StorageLevel.DISK_ONLY)


def isolation_forest_scores(
    data: Any,
    sample: Any,
    ccols: list[str],
    keep: list[str],
    params: dict[str, Any],
    *,
    config: PipelineConfig,
) -> tuple[Any, dict[str, Any]]:
    """scikit-learn's IsolationForest fitted on a bounded random sample at the driver, then scoring
    every row on the executors with ``mapInPandas`` (score = ``-score_samples``, as the native path).

    The forest subsamples ``max_samples`` rows per tree anyway, so a sample of
    ``min(fit_sample_size, spark.sample_size)`` rows loses nothing that matters. Cached on disk.
    """
    _, X = _forest_rows(sample, config)
    broadcast = data.sparkSession.sparkContext.broadcast(_forest(X, params, config.modeling.random_state))
    columns = list(ccols)

    def score(batch):
        return {"_score": -broadcast.value.score_samples(batch[columns].to_numpy(dtype=np.float64))}

    return _persisted(_python_scored(data, keep, ["_score"], score)), {"fit_rows": len(X), "n_clusters": 1}


def histograms(data: Any, ccols: list[str], n_bins: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(edges, log2(density + ALPHA))`` of every feature over every row, as ``np.histogram`` bins
    them: two aggregate passes (the range, then for each inner edge the rows at or above it)."""
    from pyspark.sql import functions as F

    ranges = data.agg(*(f(c).alias(f"{f.__name__}_{c}") for c in ccols for f in (F.min, F.max))).first()
    edges = [bin_edges(float(ranges[f"min_{c}"]), float(ranges[f"max_{c}"]), n_bins) for c in ccols]
    at_or_above = [
        F.count(F.when(F.col(c) >= F.lit(float(e[i])), 1)).alias(f"{c}_{i}")
        for c, e in zip(ccols, edges)
        for i in range(1, n_bins)
    ]
    row = data.agg(F.count(F.lit(1)).alias("_n"), *at_or_above).first()
    result = []
    for c, e in zip(ccols, edges):
        cumulative = np.array([row["_n"], *(row[f"{c}_{i}"] for i in range(1, n_bins)), 0], dtype=np.int64)
        result.append((e, log_density(cumulative[:-1] - cumulative[1:], e)))
    return result


def hbos_scores(
    data: Any, ccols: list[str], keep: list[str], params: dict[str, Any], n: int
) -> tuple[Any, dict[str, Any]]:
    """HBOS of every row against per-feature histograms of every row (``n_bins``, default 10). Cached on disk."""
    n_bins = int(params.get("n_bins", 10))
    broadcast = data.sparkSession.sparkContext.broadcast(histograms(data, ccols, n_bins))
    columns = list(ccols)

    def score(batch):
        return {"_score": score_histograms(batch[columns].to_numpy(dtype=np.float64), broadcast.value)}

    return _persisted(_python_scored(data, keep, ["_score"], score)), {"fit_rows": n, "n_clusters": 1}


def ecod_scores(
    data: Any,
    sample: Any,
    ccols: list[str],
    keep: list[str],
    params: dict[str, Any],
    *,
    config: PipelineConfig,
) -> tuple[Any, dict[str, Any]]:
    """ECOD of every row against the empirical distributions of the forest's fit rows (at most
    ``min(fit_sample_size, spark.sample_size)``, every row of a smaller table), broadcast and scored
    with the native :func:`~anomaly_detection.detect.detectors.ecod.tail_scores`. Cached on disk."""
    from anomaly_detection.detect.detectors.ecod import tail_scores

    _, X = _forest_rows(sample, config)
    broadcast = data.sparkSession.sparkContext.broadcast(X)
    columns = list(ccols)

    def score(batch):
        u_left, u_right, u_skew = tail_scores(batch[columns].to_numpy(dtype=np.float64), broadcast.value)
        return {"_score": np.maximum(np.maximum(u_left, u_right), u_skew).sum(axis=1)}

    return _persisted(_python_scored(data, keep, ["_score"], score)), {"fit_rows": len(X), "n_clusters": 1}


def knn_distances(
    X: np.ndarray,
    positions: np.ndarray,
    reference: np.ndarray,
    reference_positions: np.ndarray,
    k: int,
    *,
    distinct: bool = False,
) -> np.ndarray:
    """Distance of each row of ``X`` to its ``k``-th nearest row of ``reference`` (brute force); a row
    whose position is in ``reference_positions`` does not count itself (its k-th hit is the (k+1)-th).

    With ``distinct`` (the fit sample kept one row per distinct vector) a row equal to a reference
    row at another position, a copy of it, scores as that reference row, as natively, where copies
    share their row's score.
    """
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(reference)
    distances = np.concatenate(
        [search.kneighbors(X[s : s + KNN_CHUNK])[0] for s in range(0, len(X), KNN_CHUNK)]
    ) if len(X) else np.zeros((0, k + 1))  # fmt: skip
    itself = np.isin(positions, reference_positions)
    if distinct:
        itself |= distances[:, 0] == 0
    return np.where(itself, distances[:, k], distances[:, k - 1])


def ensemble_scores(
    data: Any,
    sample: Any,
    ccols: list[str],
    keep: list[str],
    params: dict[str, Any],
    *,
    config: PipelineConfig,
) -> tuple[Any, dict[str, Any]]:
    """The default ensemble on Spark (see the module's docstring). Returns the scored rows (cached on
    disk) and the info the native ensemble gives (``members``, ``member_agreement``)."""
    from pyspark.sql import functions as F
    from scipy.stats import spearmanr

    seed = config.modeling.random_state
    n_neighbors, reference_rows = int(params.get("n_neighbors", 5)), int(params.get("reference_rows", 2000))
    n_bins = int(params.get("n_bins", 10))
    reference_rows = min(reference_rows, config.modeling.fit_sample_size)
    positions, X = _forest_rows(sample, config)
    idx = sample_indices(len(X), reference_rows, np.random.default_rng(seed))
    reference, reference_positions = (X, positions) if idx is None else (X[idx], positions[idx])
    k = max(1, min(n_neighbors, len(reference) - 1))
    fitted = (_forest(X, {}, seed), histograms(data, ccols, n_bins), reference, reference_positions)
    broadcast = data.sparkSession.sparkContext.broadcast(fitted)
    columns, distinct = list(ccols), bool(sample.distinct)

    def score(batch):
        forest, bins, ref, ref_positions = broadcast.value
        values = batch[columns].to_numpy(dtype=np.float64)
        return {
            "_m_forest": -forest.score_samples(values),
            "_m_hbos": score_histograms(values, bins),
            "_m_knn": knn_distances(values, batch[POS].to_numpy(), ref, ref_positions, k, distinct=distinct),
        }

    raw = _persisted(_python_scored(data, keep, list(MEMBERS), score))
    centres = [q[0] for q in raw.approxQuantile(list(MEMBERS), [0.5], MEDIAN_ERROR)]
    deviations = raw.select(*(F.abs(F.col(m) - F.lit(c)).alias(m) for m, c in zip(MEMBERS, centres)))
    spreads = [1.4826 * q[0] for q in deviations.approxQuantile(list(MEMBERS), [0.5], MEDIAN_ERROR)]
    if not all(spreads):  # the fallbacks of robust_standardise: mean absolute deviation, then 1
        means = deviations.agg(*(F.avg(m).alias(m) for m in MEMBERS)).first()
        spreads = [s or 1.2533 * float(means[m]) or 1.0 for s, m in zip(spreads, MEMBERS)]
    standardised = [(F.col(m) - F.lit(c)) / F.lit(s) for m, c, s in zip(MEMBERS, centres, spreads)]
    scored = _persisted(raw.select(*keep, F.greatest(*standardised).alias("_score")))
    scored.count()  # cached before the members' copy goes
    n = len(X)
    agreement = float("nan")
    members = raw.select(*MEMBERS)
    total = raw.count()
    if total > AGREEMENT_SAMPLE:
        fraction = min(1.0, 1.1 * AGREEMENT_SAMPLE / total)
        members = members.sample(withReplacement=False, fraction=fraction, seed=seed).limit(AGREEMENT_SAMPLE)
    values = np.array(members.collect(), dtype=np.float64).reshape(-1, len(MEMBERS))
    if len(values) > 2:
        pairs = [spearmanr(values[:, a], values[:, b])[0] for a, b in ((0, 1), (0, 2), (1, 2))]
        agreement = float(np.nanmin(pairs)) if not np.isnan(pairs).all() else float("nan")
    raw.unpersist()
    info = {
        "members": [
            "isolation_forest (defaults)",
            f"hbos (n_bins={n_bins})",
            f"knn (n_neighbors={k}, reference of {min(n, reference_rows):,} rows)",
        ],
        "member_agreement": agreement,
        "agreement_rows": len(values),
        "standardisation": f"median and MAD by approxQuantile (relative error {MEDIAN_ERROR:g})",
        "fit_rows": n,
        "n_clusters": 1,
    }
    return scored, info
