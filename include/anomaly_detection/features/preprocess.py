"""Turn the flattened API table into a scaled numeric feature matrix, with a data summary.

No row is removed: every ingested row is scored, and :func:`find_duplicate_rows` only marks the
rows that repeat an earlier one (they are counted and reported). Stages, each a small pure
function: :func:`find_duplicate_rows`, :func:`extract_labels`,
:func:`select_features`, :func:`minmax_scale`, :func:`impute_kmeans` / :func:`impute_median`,
chained by :func:`preprocess`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from anomaly_detection.config import ProcessingConfig
from anomaly_detection.errors import DataError
from anomaly_detection.features.derive import FeaturePlan, plan_features
from anomaly_detection.features.roles import FEATURE_ROLES, ColumnRole, infer_roles
from anomaly_detection.ingest.sources import SOURCE_COLUMN

log = logging.getLogger(__name__)

MIN_ROWS = 2
MIN_COMPLETE_ROWS_FOR_KMEANS = 20
IMPUTATION_FIT_SAMPLE = 50_000
TRUE_TEXTS = {"1", "true", "yes", "y", "t", "anomaly", "anomalous", "outlier"}
FALSE_TEXTS = {"0", "false", "no", "n", "f", "normal", "inlier"}


@dataclass
class PreprocessResult:
    """The output of :func:`preprocess`.

    Attributes
    ----------
    features : ndarray of shape (n_rows, n_features)
        Scaled, imputed feature matrix (float64, every value in [0, 1]).
    feature_names : list of str
    table : DataFrame of shape (n_rows, n_columns)
        The flattened table (every row kept); row ``i`` is row ``i`` of ``features``.
    rows : ndarray of shape (n_rows,)
        Position of each row in the input table (``0 .. n_rows - 1``).
    duplicates : ndarray of shape (n_rows,), dtype bool
        True for a row that repeats an earlier row over all columns of the input table.
    labels : ndarray of shape (n_rows,) or None
        Ground-truth 0/1 labels when a label column is configured.
    summary : dict
        Shapes, missing values, dtypes, duplicate count, columns dropped and why.
    """

    features: np.ndarray
    feature_names: list[str]
    table: pd.DataFrame
    rows: np.ndarray
    labels: np.ndarray | None
    duplicates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    summary: dict[str, Any] = field(default_factory=dict)


def find_duplicate_rows(table: pd.DataFrame) -> np.ndarray:
    """Mark the rows that repeat an earlier row over all columns (the first occurrence is not marked).

    Rows are hashed (``pandas.util.hash_pandas_object``) and the rows whose hash was seen before are
    confirmed value by value, so a hash collision never makes a duplicate.

    Returns
    -------
    ndarray of shape (n_rows,), dtype bool
    """
    if table.shape[1] == 0 or len(table) < 2:
        return np.zeros(len(table), dtype=bool)
    try:
        hashes = pd.util.hash_pandas_object(table, index=False).to_numpy()
    except TypeError:  # unhashable cells
        table = table.astype(str)
        hashes = pd.util.hash_pandas_object(table, index=False).to_numpy()
    codes, uniques = pd.factorize(hashes)
    first = np.full(len(uniques), len(table), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(table)))
    candidates = np.flatnonzero(first[codes] != np.arange(len(table)))
    if candidates.size:  # a 64-bit hash collision is not a duplicate: compare the candidates' values
        repeat = table.iloc[candidates].reset_index(drop=True)
        original = table.iloc[first[codes[candidates]]].reset_index(drop=True)
        same = ((repeat == original) | (repeat.isna() & original.isna())).all(axis=1).to_numpy()
        candidates = candidates[same]
    duplicated = np.zeros(len(table), dtype=bool)
    duplicated[candidates] = True
    return duplicated


def extract_labels(table: pd.DataFrame, column: str) -> np.ndarray:
    """Map the label column to 0/1 (1 = anomaly), naming the column and bad values on failure."""
    if column not in table.columns:
        raise DataError(
            f"label column {column!r} not found; columns are: {', '.join(map(str, table.columns[:40]))}"
        )
    values = table[column]
    if values.isna().any():
        first = values.index[values.isna().to_numpy()][0]
        raise DataError(
            f"label column {column!r} has {int(values.isna().sum())} missing value(s), first at row {first}"
        )
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        numeric = values.astype(float)
        bad = ~numeric.isin([0.0, 1.0])
        if bad.any():
            row = values.index[bad.to_numpy()][0]
            raise DataError(
                f"label column {column!r} must hold 0/1 values; row {row} has {_plain(values.loc[row])!r}"
            )
        return numeric.to_numpy(dtype=np.int8)
    text = values.astype(str).str.strip().str.lower()
    bad = ~text.isin(TRUE_TEXTS | FALSE_TEXTS)
    if bad.any():
        row = values.index[bad.to_numpy()][0]
        raise DataError(
            f"label column {column!r} must hold 0/1, true/false or normal/anomaly; row {row} has {_plain(values.loc[row])!r}"
        )
    return text.isin(TRUE_TEXTS).to_numpy(dtype=np.int8)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def select_features(
    table: pd.DataFrame,
    processing: ProcessingConfig,
    *,
    ignored: Mapping[str, str] | None = None,
    repeats: np.ndarray | None = None,
    time_column: str | None = None,
) -> tuple[FeaturePlan, dict[str, ColumnRole], dict[str, str], pd.DataFrame]:
    """Infer the column roles and plan the features; drop the features without spread.

    ``ignored`` names the columns that are never features, with the reason (the label column);
    ``repeats`` (shape ``(n_rows,)``, bool) marks duplicate rows, left out of the row-counter rule.

    Returns
    -------
    plan : FeaturePlan
    roles : dict
        Column -> :class:`ColumnRole`.
    dropped : dict
        Column or feature -> why it gives no feature.
    raw : DataFrame of shape (n_rows, n_features)
        The planned features in the API's units (NaN = missing), before scaling.
    """
    unknown = [c for c in processing.include_features if c not in table.columns]
    if unknown:
        raise DataError(
            f"processing.include_features names unknown column(s) {unknown}; columns are: "
            f"{', '.join(map(str, table.columns[:40]))}"
        )
    roles = infer_roles(
        table, processing, ignored={SOURCE_COLUMN: "source of the record", **(ignored or {})}, repeats=repeats
    )
    dropped = {n: r.why_not_a_feature for n, r in roles.items() if r.role not in FEATURE_ROLES}
    plan = plan_features(table, roles, time_column=time_column)
    raw = plan.transform(table)
    kept = []
    for name in raw.columns:
        values = raw[name].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0 or finite.min() == finite.max():
            dropped[name] = plan.why_no_spread(name, float(finite[0]) if finite.size else None)
        else:
            kept.append(name)
    if len(kept) < len(raw.columns):
        plan, raw = plan.keep(set(kept)), raw[kept]
    return plan, roles, dropped, raw


def log_feature_choice(features: list[str], dropped: dict[str, str], dtypes: dict[str, str]) -> None:
    """Log why each column was dropped and which features remain; no feature left is a DataError."""
    for name, reason in dropped.items():
        log.info("column %r not used as a feature: %s", name, reason)
    if not features:
        kinds = ", ".join(f"{k} ({v})" for k, v in list(dtypes.items())[:30])
        raise DataError(f"no usable numeric feature column; columns are: {kinds}")
    log.info("using %d feature(s): %s", len(features), ", ".join(features))


def minmax_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale each column to [0, 1] ignoring NaN; returns ``(scaled, minimum, maximum)``."""
    minimum = np.nanmin(values, axis=0)
    maximum = np.nanmax(values, axis=0)
    span = np.where(maximum > minimum, maximum - minimum, 1.0)
    scaled = (values - minimum) / span
    return scaled, minimum, maximum


def impute_median(values: np.ndarray) -> np.ndarray:
    missing = np.isnan(values)
    if missing.any():
        medians = np.nanmedian(values, axis=0)
        values = np.where(missing, medians, values)
    return values


def impute_kmeans(values: np.ndarray, *, n_clusters: int, random_state: int) -> tuple[np.ndarray, str]:
    """Fill NaNs with the matching coordinate of the nearest KMeans centroid.

    The centroids are fitted on complete rows (a sample of at most 50,000). A row's nearest
    centroid is found with the squared distance over its observed coordinates only, computed
    for all incomplete rows at once. With fewer than 20 complete rows the column medians are
    used instead.

    Returns
    -------
    filled : ndarray of shape (n_rows, n_features)
    method : str
        What was done, for the data summary.
    """
    missing = np.isnan(values)
    if not missing.any():
        return values, "none needed"
    complete = values[~missing.any(axis=1)]
    if len(complete) < MIN_COMPLETE_ROWS_FOR_KMEANS:
        log.warning(
            "only %d complete rows (< %d): imputing missing values with column medians instead of KMeans",
            len(complete),
            MIN_COMPLETE_ROWS_FOR_KMEANS,
        )
        return impute_median(values), f"median fallback ({len(complete)} complete rows)"
    rng = np.random.default_rng(random_state)
    if len(complete) > IMPUTATION_FIT_SAMPLE:
        complete = complete[rng.choice(len(complete), IMPUTATION_FIT_SAMPLE, replace=False)]
    k = max(1, min(n_clusters, len(complete) // 5))
    centroids = KMeans(n_clusters=k, n_init=1, random_state=random_state).fit(complete).cluster_centers_
    rows = np.flatnonzero(missing.any(axis=1))
    filled = values.copy()
    for start in range(0, len(rows), 100_000):
        chunk = rows[start : start + 100_000]
        x = values[chunk]
        observed = ~np.isnan(x)
        x0 = np.where(observed, x, 0.0)
        # sum over observed j of (x_j - c_j)^2 = x0^2 . 1 - 2 x0 . c + observed . c^2
        distance = (
            (x0**2).sum(axis=1, keepdims=True)
            - 2 * x0 @ centroids.T
            + observed.astype(float) @ (centroids**2).T
        )
        nearest = centroids[distance.argmin(axis=1)]
        filled[chunk] = np.where(observed, x, nearest)
    return filled, f"kmeans ({k} clusters on {len(complete)} complete rows)"


def preprocess(
    table: pd.DataFrame,
    processing: ProcessingConfig,
    *,
    label_column: str | None = None,
    time_column: str | None = None,
    random_state: int = 0,
) -> PreprocessResult:
    """Mark duplicates, choose features, scale to [0, 1] and impute missing values (no row removed)."""
    rows_before, columns_before = table.shape
    table = table.reset_index(drop=True)
    summary: dict[str, Any] = {
        "rows_before": int(rows_before),
        "columns_before": int(columns_before),
        "missing_per_column": {str(k): int(v) for k, v in table.isna().sum().items()},
        "dtypes": {str(k): str(v) for k, v in table.dtypes.items()},
    }
    duplicates = find_duplicate_rows(table)
    summary["duplicates"] = int(duplicates.sum())
    if summary["duplicates"]:
        log.info("%d row(s) repeat an earlier row; every row is scored", summary["duplicates"])
    if len(table) < MIN_ROWS:
        raise DataError(f"need at least {MIN_ROWS} rows to detect anomalies, got {len(table)}")

    labels = extract_labels(table, label_column) if label_column else None
    plan, roles, dropped, raw = select_features(
        table,
        processing,
        ignored={label_column: "label column"} if label_column else None,
        repeats=duplicates,
        time_column=time_column,
    )
    features = plan.names
    log_feature_choice(features, dropped, summary["dtypes"])

    values = np.array(raw.to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
    infinite = ~np.isfinite(values) & ~np.isnan(values)
    n_infinite = int(infinite.sum())
    if n_infinite:
        col = features[int(np.flatnonzero(infinite.any(axis=0))[0])]
        log.warning("%d infinite value(s) treated as missing (first in column %r)", n_infinite, col)
        values[infinite] = np.nan
    n_missing = int(np.isnan(values).sum())
    scaled, minimum, maximum = minmax_scale(values)
    if processing.missing_values == "median" or not n_missing:
        filled, method = (impute_median(scaled), "median") if n_missing else (scaled, "none needed")
    else:
        filled, method = impute_kmeans(
            scaled, n_clusters=processing.imputation_clusters, random_state=random_state
        )
    if n_missing:
        log.info("imputed %d missing value(s): %s", n_missing, method)
    summary.update(
        rows_after=int(len(table)),
        features=list(features),
        roles={
            name: {"role": r.role, "reason": r.reason, **({"unit": r.unit} if r.unit else {})}
            for name, r in roles.items()
        },
        feature_plan=plan.to_dict(),
        columns_dropped=dropped,
        imputed_values=n_missing,
        imputation=method,
        infinite_values=n_infinite,
        scaling={
            "method": "minmax",
            "min": dict(zip(features, minimum.tolist())),
            "max": dict(zip(features, maximum.tolist())),
        },
    )
    return PreprocessResult(
        features=np.ascontiguousarray(filled),
        feature_names=features,
        table=table,
        rows=table.index.to_numpy(),
        labels=labels,
        duplicates=duplicates,
        summary=summary,
    )
