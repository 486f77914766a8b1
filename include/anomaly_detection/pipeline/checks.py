"""Warnings gathered from every stage's outputs, and the data validation thresholds.

Pure functions over the stage outputs as plain data (``ingest.json``, ``data_summary.json``, the
best model's flags), so the CLI, the DAG and the tests build the same list.
"""

from __future__ import annotations

from typing import Any

from anomaly_detection.config import ValidationConfig
from anomaly_detection.errors import DataError

#: A feature column imputed in more than this share of its values is a warning.
IMPUTED_SHARE_WARNING = 0.5
#: Duplicate rows above this share of the ingested rows are a warning.
DUPLICATE_SHARE_WARNING = 0.1


def ingest_warnings(ingest_info: dict[str, Any], *, records_path: str | None) -> list[str]:
    """The ingestion's own warnings (pagination stops) and, when auto-detected, the records shape."""
    warnings = [f"ingest: {w}" for w in ingest_info.get("warnings") or []]
    shape = ingest_info.get("records_shape")
    if shape and not records_path:
        warnings.append(f"records auto-detected: {shape} (set source.records_path to choose)")
    return warnings


def summary_warnings(summary: dict[str, Any]) -> list[str]:
    """Dropped columns, heavy imputation and a large share of duplicates, from ``data_summary.json``."""
    warnings = []
    dropped = summary.get("columns_dropped") or {}
    if dropped:
        listed = "; ".join(f"{name} ({reason})" for name, reason in dropped.items())
        warnings.append(f"{len(dropped)} column(s) not used as features: {listed}")
    rows = int(summary.get("rows_before") or 0)
    missing = summary.get("missing_per_column") or {}
    for name in summary.get("features") or []:
        share = missing.get(name, 0) / rows if rows else 0.0
        if share > IMPUTED_SHARE_WARNING:
            warnings.append(f"column {name}: {share:.0%} of its values missing, imputed")
    duplicates = int(summary.get("duplicates") or 0)
    if rows and duplicates / rows > DUPLICATE_SHARE_WARNING:
        warnings.append(
            f"{duplicates / rows:.0%} of the rows are duplicates ({duplicates:,} of {rows:,}), each one scored"
        )
    return warnings


def spark_skipped_warnings(algorithms: list[str], spark_algorithms: tuple[str, ...]) -> list[str]:
    """The configured algorithms a Spark run left out (the detect job logs the same line)."""
    skipped = [a for a in algorithms if a not in spark_algorithms]
    if not skipped:
        return []
    return [
        f"not available on the Spark path, skipped: {', '.join(skipped)} (Spark runs {', '.join(spark_algorithms)})"
    ]


def skipped_on_spark(run_meta: dict[str, Any] | None, algorithms: list[str]) -> list[str]:
    """:func:`spark_skipped_warnings` for a run on the Spark path (none for a native run)."""
    if (run_meta or {}).get("mode") != "spark":
        return []
    from anomaly_detection.spark.submit import SPARK_ALGORITHMS

    return spark_skipped_warnings(algorithms, SPARK_ALGORITHMS)


def stage_warnings(
    ingest_info: dict[str, Any],
    summary: dict[str, Any],
    model_warnings: list[str],
    *,
    records_path: str | None,
) -> list[str]:
    """Every stage's warnings in pipeline order: ingestion, preprocessing, then the models."""
    return [
        *ingest_warnings(ingest_info, records_path=records_path),
        *summary_warnings(summary),
        *model_warnings,
    ]


def missing_share(summary: dict[str, Any]) -> float:
    """The share of the feature cells that were missing (and imputed)."""
    cells = int(summary.get("rows_after") or 0) * len(summary.get("features") or [])
    return int(summary.get("imputed_values") or 0) / cells if cells else 0.0


def validate_rows(rows: int, validation: ValidationConfig) -> None:
    """Stop before preprocessing when fewer rows were ingested than ``validation.min_rows``."""
    if rows < validation.min_rows:
        raise DataError(f"validation.min_rows: {rows} row(s) ingested, fewer than {validation.min_rows}")


def validate_summary(summary: dict[str, Any], validation: ValidationConfig) -> None:
    """Stop before detection when too few rows were ingested, too few features are left or most
    feature cells are missing."""
    validate_rows(int(summary.get("rows_before") or 0), validation)
    features = len(summary.get("features") or [])
    if features < validation.min_features:
        raise DataError(
            f"validation.min_features: {features} usable feature column(s), fewer than {validation.min_features}"
        )
    share = missing_share(summary)
    if share > validation.max_missing_share:
        raise DataError(
            f"validation.max_missing_share: {share:.1%} of the feature cells missing, "
            f"more than {validation.max_missing_share:.1%}"
        )
