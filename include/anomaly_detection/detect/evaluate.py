"""Score each detector configuration and select the best.

Internal metrics compare the anomaly group with the normal group: silhouette (on a fixed-size
random sample, so its cost grows linearly with rows), Davies-Bouldin and Calinski-Harabasz.
With ground-truth labels, ROC-AUC and PR-AUC come from the continuous score and precision,
recall and F1 from the 0/1 labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from anomaly_detection.detect.grid import Detection

LOWER_IS_BETTER = frozenset({"davies_bouldin"})
METRICS = ("silhouette", "davies_bouldin", "calinski_harabasz")
MAX_SANE_SHARE = 0.5


@dataclass
class ModelResult:
    """One configuration's evaluation, as stored in ``results.json``."""

    algorithm: str
    params: dict[str, Any]
    metric: str
    score: float | None
    silhouette: float | None
    davies_bouldin: float | None
    calinski_harabasz: float | None
    anomaly_count: int
    anomaly_share: float
    threshold: float
    seconds: float
    flags: list[str] = field(default_factory=list)
    roc_auc: float | None = None
    pr_auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def selectable(self) -> bool:
        return self.score is not None and not any(
            f.startswith(("degenerate", "single cluster")) for f in self.flags
        )

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["params"] = {k: _plain(v) for k, v in self.params.items()}
        data["info"] = {k: _plain(v) for k, v in self.info.items() if k != "cluster_sizes"}
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _metric_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random sample of row indices that holds both groups whenever both exist."""
    n = len(labels)
    if n <= size:
        return np.arange(n)
    idx = rng.choice(n, size, replace=False)
    for group in (0, 1):
        if not (labels[idx] == group).any():
            members = np.flatnonzero(labels == group)
            if members.size:
                take = min(members.size, max(1, size // 100))
                idx[:take] = rng.choice(members, take, replace=False)
    return idx


def two_group_silhouette(X: np.ndarray, labels: np.ndarray, *, chunk_rows: int = 1024) -> float:
    """Mean silhouette coefficient of a 0/1 split, computed in row blocks with one matrix product each.

    Equal to ``sklearn.metrics.silhouette_score(X, labels)`` for two groups, several times faster
    because each block of pairwise distances is reduced to per-group sums by a matrix product.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,)
        0/1 group of each row; both groups must be present.
    """
    X = np.asarray(X, dtype=np.float64)
    onehot = np.stack([labels == 0, labels == 1], axis=1).astype(np.float64)
    sizes = onehot.sum(axis=0)
    squared = np.einsum("ij,ij->i", X, X)
    total = 0.0
    for start in range(0, len(X), chunk_rows):
        block = X[start : start + chunk_rows]
        d2 = squared[start : start + chunk_rows, None] + squared[None, :] - 2.0 * block @ X.T
        np.maximum(d2, 0.0, out=d2)
        sums = np.sqrt(d2, out=d2) @ onehot  # (block rows, 2): distance sums to each group
        own = labels[start : start + chunk_rows].astype(int)
        own_size = sizes[own]
        a = sums[np.arange(len(own)), own] / np.maximum(own_size - 1, 1)
        b = sums[np.arange(len(own)), 1 - own] / sizes[1 - own]
        denominator = np.maximum(a, b)
        s = np.where(
            (own_size > 1) & (denominator > 0), (b - a) / np.where(denominator > 0, denominator, 1.0), 0.0
        )
        total += float(s.sum())
    return total / len(X)


def internal_metrics(
    X: np.ndarray, labels: np.ndarray, *, sample_size: int, random_state: int
) -> dict[str, float | None]:
    """Silhouette (sampled), Davies-Bouldin and Calinski-Harabasz of the anomaly/normal split.

    All three are ``None`` when the split has fewer than two non-empty groups.
    """
    counts = np.bincount(labels, minlength=2)
    if (counts > 0).sum() < 2:
        return dict.fromkeys(METRICS)
    rng = np.random.default_rng(random_state)
    idx = _metric_sample(labels, sample_size, rng)
    sample_labels = labels[idx]
    silhouette = (
        _finite(two_group_silhouette(X[idx], sample_labels))
        if len(np.unique(sample_labels)) == 2 and len(idx) > 2
        else None
    )
    return {
        "silhouette": silhouette,
        "davies_bouldin": _finite(davies_bouldin_score(X, labels)),
        "calinski_harabasz": _finite(calinski_harabasz_score(X, labels)),
    }


def label_metrics(y_true: np.ndarray, detection: Detection) -> dict[str, float | None]:
    """ROC-AUC and PR-AUC from the score; precision, recall and F1 from the labels."""
    if len(np.unique(y_true)) < 2:
        return {"roc_auc": None, "pr_auc": None, "precision": None, "recall": None, "f1": None}
    return {
        "roc_auc": _finite(roc_auc_score(y_true, detection.scores)),
        "pr_auc": _finite(average_precision_score(y_true, detection.scores)),
        "precision": _finite(precision_score(y_true, detection.labels, zero_division=0)),
        "recall": _finite(recall_score(y_true, detection.labels, zero_division=0)),
        "f1": _finite(f1_score(y_true, detection.labels, zero_division=0)),
    }


def sanity_flags(detection: Detection) -> list[str]:
    flags = []
    share = float(detection.labels.mean())
    if share == 0:
        flags.append("anomaly share is 0%")
    elif share > MAX_SANE_SHARE:
        flags.append(f"anomaly share {share:.0%} is above {MAX_SANE_SHARE:.0%}")
    if detection.info.get("degenerate"):
        flags.append(f"degenerate: {detection.info['degenerate']}")
    elif np.ptp(detection.scores) == 0:
        flags.append("degenerate: every row has the same score")
    if (
        detection.info.get("n_clusters") == 1
        and detection.algorithm in ("kmeans", "bisecting_kmeans")
        and detection.params.get("n_clusters", 2) > 1
    ):
        flags.append("single cluster: fewer distinct rows than clusters asked for")
    elif detection.info.get("n_clusters") == 1 and detection.algorithm == "dbscan":
        flags.append("single cluster found by DBSCAN")
    return flags


def evaluate(
    X: np.ndarray,
    detection: Detection,
    *,
    metric: str,
    y_true: np.ndarray | None = None,
    sample_size: int = 5_000,
    random_state: int = 0,
) -> ModelResult:
    """Evaluate one detection on the scaled matrix ``X`` of shape (n_rows, n_features)."""
    internal = internal_metrics(X, detection.labels, sample_size=sample_size, random_state=random_state)
    flags = sanity_flags(detection)
    if internal[metric] is None and "anomaly share is 0%" not in flags:
        flags.append(f"{metric} undefined for this split")
    result = ModelResult(
        algorithm=detection.algorithm,
        params=detection.params,
        metric=metric,
        score=internal[metric],
        anomaly_count=int(detection.labels.sum()),
        anomaly_share=float(detection.labels.mean()),
        threshold=float(detection.threshold),
        seconds=round(detection.seconds, 4),
        flags=flags,
        info=detection.info,
        **internal,
    )
    if y_true is not None:
        for key, value in label_metrics(y_true, detection).items():
            setattr(result, key, value)
    return result


def better(a: ModelResult, b: ModelResult | None) -> bool:
    """Whether ``a`` beats ``b`` on their (shared) metric; selectable results beat the rest."""
    if b is None:
        return True
    if a.selectable != b.selectable:
        return a.selectable
    if a.score is None or b.score is None:
        return b.score is None and a.score is not None
    return a.score < b.score if a.metric in LOWER_IS_BETTER else a.score > b.score


def select_best(results: Iterable[ModelResult]) -> ModelResult | None:
    best: ModelResult | None = None
    for result in results:
        if better(result, best):
            best = result
    return best


def split_metrics_from_aggregates(
    counts: np.ndarray, sums: np.ndarray, squared_norms: np.ndarray, mean_distances: np.ndarray
) -> dict[str, float | None]:
    """Davies-Bouldin and Calinski-Harabasz of a 0/1 split from per-group aggregates (the Spark path).

    Equal to scikit-learn's scores on the full data, computed from what one or two distributed
    aggregations give: no row reaches the driver.

    Parameters
    ----------
    counts : ndarray of shape (2,)
        Rows in group 0 (normal) and group 1 (anomalies).
    sums : ndarray of shape (2, n_features)
        Sum of the feature vectors of each group.
    squared_norms : ndarray of shape (2,)
        Sum over each group's rows of ``||x||^2``.
    mean_distances : ndarray of shape (2,)
        Mean Euclidean distance of each group's rows to the group's centroid (a second pass).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if (counts > 0).sum() < 2:
        return {"davies_bouldin": None, "calinski_harabasz": None}
    sums = np.asarray(sums, dtype=np.float64)
    centroids = sums / counts[:, None]
    overall = sums.sum(axis=0) / counts.sum()
    between = float((counts * ((centroids - overall) ** 2).sum(axis=1)).sum())
    within = float((np.asarray(squared_norms, dtype=np.float64) - counts * (centroids**2).sum(axis=1)).sum())
    n, k = counts.sum(), 2
    calinski = 1.0 if within <= 0 else between * (n - k) / (within * (k - 1))
    separation = float(np.sqrt(((centroids[0] - centroids[1]) ** 2).sum()))
    davies = 0.0 if separation == 0 else float(np.sum(mean_distances)) / separation
    return {"davies_bouldin": _finite(davies), "calinski_harabasz": _finite(calinski)}


def choose(results: Iterable[ModelResult], *, selection: str) -> tuple[ModelResult | None, str]:
    """The selected configuration and why, under ``evaluation.selection``.

    ``ensemble`` (the default) takes the ``ensemble`` detector's result: a default Isolation
    Forest and kNN distance combined, which beats a default Isolation Forest on labelled
    benchmarks where picking by an internal metric does not (docs/SELECTION.md). It falls back to
    the best configuration by the metric, saying why, when the ensemble did not run (not in
    ``modeling.algorithms``) or is flagged unusable (degenerate), so a
    sound configuration always wins over a degenerate one. ``metric`` picks by the metric alone.
    """
    results = list(results)
    by_metric = select_best(results)
    if by_metric is None:
        return None, "no configuration was evaluated"
    metric = by_metric.metric
    if selection != "ensemble":
        return by_metric, f"best {metric} of {len(results)} configurations"
    ensembles = [r for r in results if r.algorithm == "ensemble"]
    if not ensembles:
        return (
            by_metric,
            f"the ensemble did not run (not in modeling.algorithms, or not on this engine): best {metric} instead",
        )
    ensemble = select_best(ensembles)
    if not ensemble.selectable and by_metric.selectable:
        return by_metric, f"the ensemble is unusable ({'; '.join(ensemble.flags)}): best {metric} instead"
    return (
        ensemble,
        "the default ensemble (Isolation Forest, HBOS and kNN distance, each standardised, combined by their maximum)",
    )
