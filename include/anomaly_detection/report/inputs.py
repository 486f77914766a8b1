"""What the pipeline hands the report: :class:`ReportInputs`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    """Everything the report shows about one pipeline run.

    Attributes
    ----------
    run : dict
        Run metadata: ``run_id``, ``name``, ``status``, ``source_url`` (already redacted),
        ``started_at``, ``finished_at`` (ISO strings), ``duration_seconds``, ``versions``
        (name -> version) and ``rerun_of`` (run id or ``None``).
    config : dict
        The resolved, redacted configuration (nested plain data).
    summary : dict
        Data summary: ``rows_before``, ``rows_after``, ``columns_before``,
        ``duplicates`` (rows repeating an earlier row; all scored), ``duplicates_flagged`` (how many
        of the flagged rows are duplicates, or None), ``missing_per_column`` (column -> count before imputation),
        ``dtypes`` (column -> dtype), ``columns_dropped`` (column -> reason), ``features``,
        ``imputed_values``, ``imputation`` and ``infinite_values``.
    preview : pandas.DataFrame
        First rows of the flattened API table.
    models : list of dict
        One entry per configuration tried: ``algorithm``, ``params``, ``metric``, ``score``,
        ``silhouette``, ``davies_bouldin``, ``calinski_harabasz``, ``anomaly_count``,
        ``anomaly_share`` (fraction), ``seconds``, ``flags`` and optionally ``roc_auc``,
        ``pr_auc``, ``precision``, ``recall``, ``f1``.
    best : dict
        The selected configuration (same fields as a ``models`` entry) plus ``threshold``.
    features : numpy.ndarray
        Sample of the scaled feature matrix, shape ``(n_sample, n_features)``.
    feature_names : list of str
        Names of the feature columns.
    sample_labels : numpy.ndarray
        Anomaly labels (0/1) of the best model for the sampled rows, shape ``(n_sample,)``.
    scores : numpy.ndarray
        Anomaly score of the best model for every row, or for a uniform random sample of them
        when the run has more rows than ``report.plot_sample_size`` (higher is more anomalous).
    threshold : float
        Score from which the best model flags a row.
    top_anomalies : pandas.DataFrame
        Top flagged rows: ``rank``, ``score``, then the original fields.
    log_text : str
        The full pipeline log.
    correlation_heatmap : bool
        Whether to draw the feature correlation heatmap.
    decision : dict or None, optional
        Review decision: ``decision`` (``approved``, ``rejected`` or ``rerun``), ``by``,
        ``at``, ``comment`` and ``adjustments``.
    warnings : list of str, optional
        Sanity flags shown prominently at the top.
    explained_features : dict, optional
        Feature name -> how many of the top anomalies' explanations name it (most first).
    explained_rows, explanation_reference_rows : int, optional
        How many top anomalies were explained, and from how many normal sampled rows.
    time_view : insights.TimeView, optional
        The rows over time; ``None`` when the table has no time column.
    history : insights.HistoryView, optional
        Earlier runs of the same source and the features' drift.
    rerun : rerun_diff.RerunDiff, optional
        What changed from the run this one reruns.
    """

    run: dict
    config: dict
    summary: dict
    preview: pd.DataFrame
    models: list[dict]
    best: dict
    features: np.ndarray
    feature_names: list[str]
    sample_labels: np.ndarray
    scores: np.ndarray
    threshold: float
    top_anomalies: pd.DataFrame
    log_text: str
    correlation_heatmap: bool
    decision: dict | None = None
    warnings: list[str] = field(default_factory=list)
    explained_features: dict[str, int] = field(default_factory=dict)
    explained_rows: int = 0
    explanation_reference_rows: int = 0
    time_view: Any = None
    history: Any = None
    rerun: Any = None
