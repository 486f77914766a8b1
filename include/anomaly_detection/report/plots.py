"""Figures of the HTML report, each returned as a base64-encoded PNG string.

Every function builds a :class:`matplotlib.figure.Figure` directly (the ``Agg`` canvas, no
pyplot state shared between threads), renders it to PNG at a modest size and dpi, and closes it.
The functions accept already-sampled inputs for the point plots (scatter, heatmap); only
:func:`score_distribution` is meant for the full score vector and bins it with
:func:`numpy.histogram`, so it stays fast on millions of rows.

All text that comes from the data (feature names, algorithm names, parameters) goes through
:func:`_label`, which escapes ``$`` so that matplotlib never parses API strings as mathtext.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

log = logging.getLogger(__name__)

DPI = 100
NORMAL_COLOUR = "#8da0b3"
ANOMALY_COLOUR = "#d62728"
THRESHOLD_COLOUR = "#222222"
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728",
]  # fmt: skip
_LOWER_IS_BETTER = ("davies", "bouldin")
_MAX_LABEL = 40


def _label(text: Any, limit: int = _MAX_LABEL) -> str:
    """Make an arbitrary value safe to draw as matplotlib text.

    Parameters
    ----------
    text : Any
        Value to show; converted with :func:`str`.
    limit : int, optional
        Maximum number of characters; longer text is cut and ends with an ellipsis.

    Returns
    -------
    str
        Single-line text with ``$`` escaped so that it is never parsed as mathtext.
    """
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_base64(fig: Figure) -> str:
    """Render ``fig`` to PNG, release it and return the base64 text (no data-URI prefix)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _finite_rows(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=float)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    return np.isfinite(x).all(axis=1)


def correlation_heatmap(features: np.ndarray, feature_names: Sequence[str]) -> str | None:
    """Draw the Pearson correlation matrix of the features.

    Parameters
    ----------
    features : numpy.ndarray
        Sampled feature matrix, shape ``(n_rows, n_features)``.
    feature_names : sequence of str
        Column names, one per feature.

    Returns
    -------
    str or None
        Base64 PNG, or ``None`` when there are fewer than two features or two usable rows.
    """
    x = np.asarray(features, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        return None
    x = x[_finite_rows(x)]
    if x.shape[0] < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False)
    n = corr.shape[0]
    names = [_label(name, 28) for name in feature_names][:n]
    names += [f"feature {i}" for i in range(len(names), n)]

    side = float(np.clip(0.45 * n + 2.5, 4.5, 12.0))
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(corr), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson correlation")
    font = float(np.clip(11 - 0.15 * n, 5, 10))
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    if n <= 10:  # per-cell labels cost more than the rest of the figure
        for i in range(n):
            for j in range(n):
                value = corr[i, j]
                if np.isfinite(value):
                    colour = "white" if abs(value) > 0.6 else "black"
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=font - 1, color=colour)
    ax.set_title(f"Feature correlation ({x.shape[0]:,} sampled rows)")
    return _to_base64(fig)


def score_distribution(
    scores: np.ndarray, threshold: float | None, bins: int = 60, *, rows_total: int | None = None
) -> str | None:
    """Draw the histogram of anomaly scores and the ranked-score curve, both with the cut.

    Parameters
    ----------
    scores : numpy.ndarray
        Anomaly score of every row, or of a uniform sample of the rows (higher is more anomalous);
        may hold millions of values.
    threshold : float or None
        Score from which a row is flagged; drawn as a dashed line when finite.
    bins : int, optional
        Number of histogram bins.
    rows_total : int, optional
        The rows ``scores`` stand for when they are a sample: ranks are scaled to it.

    Returns
    -------
    str or None
        Base64 PNG, or ``None`` when there is no finite score.
    """
    s = np.asarray(scores, dtype=float).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    thr = float(threshold) if threshold is not None and np.isfinite(threshold) else None
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(s, bins=bins, range=(lo, hi))
    flagged = edges[:-1] >= thr if thr is not None else np.zeros(bins, dtype=bool)
    if thr is not None:
        # the bin holding the threshold counts as flagged only if most of it lies above it
        flagged |= (edges[:-1] < thr) & (edges[1:] > thr) & ((edges[1:] - thr) > (thr - edges[:-1]))

    fig = _new_figure(12.0, 4.2)
    ax, ranked_ax = fig.subplots(1, 2, width_ratios=[1.15, 1])
    widths = np.diff(edges)
    colours = np.where(flagged, ANOMALY_COLOUR, NORMAL_COLOUR)
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=colours, edgecolor="white", linewidth=0.4)
    if counts.max() > 0 and counts[counts > 0].min() * 50 < counts.max():
        ax.set_yscale("log")
        ax.set_ylabel("rows (log scale)")
    else:
        ax.set_ylabel("rows")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    handles = [Patch(color=NORMAL_COLOUR, label="normal"), Patch(color=ANOMALY_COLOUR, label="flagged")]
    scale = max(1.0, (rows_total or s.size) / s.size)
    above = int((s >= thr).sum()) if thr is not None else 0
    if thr is not None:
        line = ax.axvline(thr, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.5)
        line.set_label(f"threshold {thr:.4g} ({round(above * scale):,} rows at or above)")
        handles.append(line)
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    ax.set_title(f"Score distribution ({s.size:,} rows)")
    ax.grid(axis="y", alpha=0.3)
    _ranked_scores(ranked_ax, s, above, scale)
    return _to_base64(fig)


def _ranked_scores(ax: Any, scores: np.ndarray, flagged: int, scale: float) -> None:
    """Scores from the highest down against their rank (log scale, at most about 2,000 points drawn),
    the flagged ranks in red and the cut as a dashed line."""
    ordered = np.sort(scores)[::-1]
    positions = np.unique(np.geomspace(1, ordered.size, num=min(ordered.size, 2000)).astype(int)) - 1
    ranks = (positions + 1) * scale
    ax.plot(ranks, ordered[positions], color=NORMAL_COLOUR, linewidth=1.6)
    top = positions < flagged
    if top.any():
        ax.plot(ranks[top], ordered[positions[top]], color=ANOMALY_COLOUR, linewidth=2.2, label="flagged")
        ax.axvline(flagged * scale, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.5,
                   label=f"cut at rank {round(flagged * scale):,}")  # fmt: skip
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
    ax.set_xscale("log")
    ax.set_xlabel("rank (1 = highest score, log scale)")
    ax.set_ylabel("anomaly score")
    ax.set_title("Ranked scores and the cut")
    ax.grid(alpha=0.3)


def _config_label(model: dict[str, Any], index: int) -> str:
    params = model.get("params") or {}
    text = ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else str(params)
    return _label(f"#{index + 1} {model.get('algorithm', '?')}" + (f" ({text})" if text else ""), 60)


def _as_float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def model_comparison(models: Sequence[dict[str, Any]], best_index: int | None = None) -> str | None:
    """Draw the selection metric of every configuration tried, coloured by algorithm.

    When no configuration has a selection score, the anomaly share is drawn instead.

    Parameters
    ----------
    models : sequence of dict
        One entry per configuration with ``algorithm``, ``params``, ``metric`` and ``score``.
    best_index : int, optional
        Position of the selected configuration in ``models``; its bar is outlined.

    Returns
    -------
    str or None
        Base64 PNG, or ``None`` when ``models`` is empty.
    """
    if not models:
        return None
    scores = np.array([_as_float(m.get("score")) for m in models])
    metric = next((str(m["metric"]) for m in models if m.get("metric")), "score")
    if np.isfinite(scores).any():
        values, xlabel = scores, _label(metric)
        if any(word in metric.lower() for word in _LOWER_IS_BETTER):
            xlabel += " (lower is better)"
        else:
            xlabel += " (higher is better)"
        title = f"Model comparison by {_label(metric)}"
    else:
        values = np.array([_as_float(m.get("anomaly_share")) * 100 for m in models])
        xlabel = "anomaly share (%)"
        title = "Model comparison (no selection score available: anomaly share shown)"

    algorithms = list(dict.fromkeys(str(m.get("algorithm", "?")) for m in models))
    colour_of = {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(algorithms)}
    n = len(models)
    height = float(np.clip(0.28 * n + 1.9, 3.0, 16.0))
    fig = _new_figure(10.0, height)
    ax = fig.add_subplot()
    y = np.arange(n)
    plotted = np.where(np.isfinite(values), values, 0.0)
    bars = ax.barh(y, plotted, color=[colour_of[str(m.get("algorithm", "?"))] for m in models], height=0.75)
    if best_index is not None and 0 <= best_index < n:
        bars[best_index].set_edgecolor("black")
        bars[best_index].set_linewidth(2.0)
        bars[best_index].set_hatch("//")
    font = float(np.clip(10 - 0.05 * n, 5, 9))
    show_labels = n <= 60
    ax.set_yticks(y, [_config_label(m, i) for i, m in enumerate(models)] if show_labels else [])
    ax.tick_params(axis="y", labelsize=font)
    ax.invert_yaxis()
    span = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    for i, v in enumerate(values):
        text = "n/a" if not np.isfinite(v) else f"{v:.4g}"
        ax.text(
            plotted[i] + (0.01 * span if plotted[i] >= 0 else -0.01 * span),
            i,
            text + ("  (selected)" if i == best_index else ""),
            va="center",
            ha="left" if plotted[i] >= 0 else "right",
            fontsize=font,
            fontweight="bold" if i == best_index else "normal",
        )
    ax.axvline(0, color="black", linewidth=0.6)
    ax.margins(x=0.3)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(
        handles=[Patch(color=colour_of[a], label=_label(a)) for a in algorithms],
        loc="outside lower center",
        ncol=min(len(algorithms), 5),
        fontsize=8,
        frameon=False,
    )
    return _to_base64(fig)


def pca_scatter(
    features: np.ndarray,
    labels: np.ndarray,
    feature_names: Sequence[str] = (),
) -> str | None:
    """Draw the sampled rows in two dimensions with the anomalies highlighted.

    With two or more features the rows are projected on their first two principal
    components; with a single feature its values are drawn against the row position.

    Parameters
    ----------
    features : numpy.ndarray
        Sampled, scaled feature matrix, shape ``(n_rows, n_features)``.
    labels : numpy.ndarray
        ``1`` for an anomaly and ``0`` otherwise, one per row of ``features``.
    feature_names : sequence of str, optional
        Column names, used to label the single-feature plot.

    Returns
    -------
    str or None
        Base64 PNG, or ``None`` when there are no usable rows.
    """
    x = np.asarray(features, dtype=float)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    y = np.asarray(labels).ravel()
    n = min(len(x), len(y))
    if n != len(x) or n != len(y):
        log.warning("scatter: %d feature rows but %d labels; using the first %d", len(x), len(y), n)
    x, y = x[:n], y[:n].astype(bool)
    keep = _finite_rows(x)
    x, y = x[keep], y[keep]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return None

    fig = _new_figure(8.0, 6.0)
    ax = fig.add_subplot()
    if x.shape[1] >= 2 and x.shape[0] >= 2:
        centred = x - x.mean(axis=0)
        # thin SVD of the centred sample: the same projection as sklearn's PCA, without the import
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        total = float((sv**2).sum())
        ratio = (sv[:2] ** 2) / total if total > 0 else np.zeros(2)
        if coords.shape[1] < 2:
            coords = np.column_stack([coords, np.zeros(len(coords))])
            ratio = np.append(ratio, 0.0)
        ax.set_xlabel(f"PC 1 ({ratio[0]:.1%} of variance)")
        ax.set_ylabel(f"PC 2 ({ratio[1]:.1%} of variance)")
        title = f"PCA projection of {x.shape[0]:,} sampled rows ({x.shape[1]} features)"
    else:
        coords = np.column_stack([np.arange(len(x)), x[:, 0]])
        name = _label(feature_names[0]) if len(feature_names) else "feature"
        ax.set_xlabel("row (sample order)")
        ax.set_ylabel(f"{name} (scaled)")
        title = f"Single feature {name}: {x.shape[0]:,} sampled rows (no PCA with one feature)"
    size = float(np.clip(4000 / max(len(coords), 1), 3, 30))
    ax.scatter(
        coords[~y, 0], coords[~y, 1], s=size, c=NORMAL_COLOUR, alpha=0.5,
        linewidths=0, label=f"normal ({int((~y).sum()):,})", rasterized=True,
    )  # fmt: skip
    ax.scatter(
        coords[y, 0], coords[y, 1], s=max(size * 1.8, 12), c=ANOMALY_COLOUR, alpha=0.9,
        edgecolors="black", linewidths=0.3, label=f"anomaly ({int(y.sum()):,})", rasterized=True,
    )  # fmt: skip
    ax.legend(loc="best", fontsize=9, framealpha=0.9, markerscale=1.5)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _to_base64(fig)


def _time_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _shade(ax: Any, events: Sequence[tuple[np.datetime64, np.datetime64]], times: np.ndarray) -> None:
    if not len(events) or not len(times):
        return
    least = (times.max() - times.min()) * 0.004
    for start, end in events:
        start, end = np.datetime64(start, "ns"), np.datetime64(end, "ns")
        middle, width = start + (end - start) / 2, max(end - start, least)
        ax.axvspan(middle - width / 2, middle + width / 2, color=ANOMALY_COLOUR, alpha=0.12, linewidth=0)


def features_over_time(
    times: np.ndarray,
    values: np.ndarray,
    anomalies: np.ndarray,
    feature_names: Sequence[str],
    events: Sequence[tuple[np.datetime64, np.datetime64]] = (),
) -> str | None:
    """Small multiples of the main features against time, anomalies in red.

    Parameters
    ----------
    times : numpy.ndarray
        Instants of the drawn rows, ``datetime64``, shape ``(n_rows,)``; NaT rows are skipped.
    values : numpy.ndarray
        The features in the API's units, shape ``(n_rows, n_plotted)`` (at most 4 columns drawn).
    anomalies : numpy.ndarray
        0/1 flag per row, shape ``(n_rows,)``.
    feature_names : sequence of str
        Names of the columns of ``values``.
    events : sequence of (start, end)
        Time spans shaded in every panel (an instant is widened to 0.4 % of the time axis).

    Returns
    -------
    str or None
        Base64 PNG, or ``None`` when no row has both an instant and a value.
    """
    times = np.asarray(times, dtype="datetime64[ns]")
    values = np.asarray(values, dtype=np.float64).reshape(len(times), -1)[:, :4]
    flags = np.asarray(anomalies).astype(bool)
    dated = ~np.isnat(times)
    if not dated.any() or values.shape[1] == 0:
        return None
    k = values.shape[1]
    fig = _new_figure(10, 1.9 * k + 0.6)
    axes = fig.subplots(k, 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        ok = dated & np.isfinite(values[:, j])
        normal, anomalous = ok & ~flags, ok & flags
        ax.scatter(
            times[normal],
            values[normal, j],
            s=4,
            c=NORMAL_COLOUR,
            alpha=0.5,
            linewidths=0,
            rasterized=True,
            label="normal (sample)",
        )
        ax.scatter(
            times[anomalous], values[anomalous, j], s=16, c=ANOMALY_COLOUR, linewidths=0, label="anomaly"
        )
        ax.set_ylabel(_label(feature_names[j], 22), fontsize=9)
        ax.grid(alpha=0.25)
        _shade(ax, events, times[dated])
        _time_axis(ax)
    axes[0].legend(loc="upper right", fontsize=8, markerscale=2, framealpha=0.8)
    return _to_base64(fig)


def anomalies_per_bucket(
    starts: np.ndarray, rows: np.ndarray, anomalies: np.ndarray, width_label: str
) -> str | None:
    """Bars of flagged rows per time bucket, with the share of rows flagged as a line.

    Parameters
    ----------
    starts : numpy.ndarray
        Bucket starts, ``datetime64``, shape ``(n_buckets,)``.
    rows, anomalies : numpy.ndarray
        Rows and flagged rows per bucket, shape ``(n_buckets,)``.
    width_label : str
        The bucket width for the axis label (``"1 hour"``).
    """
    starts = np.asarray(starts, dtype="datetime64[ns]")
    rows = np.asarray(rows, dtype=np.float64)
    anomalies = np.asarray(anomalies, dtype=np.float64)
    if starts.size == 0:
        return None
    fig = _new_figure(10, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    width = (starts[1] - starts[0]) if starts.size > 1 else np.timedelta64(1, "h")
    ax.bar(
        starts + width / 2, anomalies, width=width * 0.9, color=ANOMALY_COLOUR, alpha=0.85, label="anomalies"
    )
    ax.set_ylabel(f"anomalies per {_label(width_label)}")
    ax.grid(axis="y", alpha=0.25)
    share = np.divide(anomalies, rows, out=np.full_like(anomalies, np.nan), where=rows > 0)
    twin = ax.twinx()
    twin.plot(
        starts + width / 2,
        100 * share,
        color=THRESHOLD_COLOUR,
        linewidth=1.2,
        marker=".",
        label="share of rows (%)",
    )
    twin.set_ylabel("share of rows flagged (%)")
    twin.set_ylim(bottom=0)
    _time_axis(ax)
    handles = [*ax.get_legend_handles_labels()[0], *twin.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.8)
    return _to_base64(fig)


def share_trend(labels: Sequence[str], shares: Sequence[float], current_index: int) -> str | None:
    """Anomaly share of the previous runs of a source and this one (highlighted).

    Parameters
    ----------
    labels : sequence of str
        One label per run (its finish time), oldest first.
    shares : sequence of float
        Anomaly share (fraction) per run.
    current_index : int
        Position of this run in ``labels``.
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.size == 0:
        return None
    fig = _new_figure(8, 2.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(shares.size)
    ax.plot(x, 100 * shares, color=_PALETTE[0], marker="o", linewidth=1.5)
    ax.scatter(
        [current_index],
        [100 * shares[current_index]],
        s=90,
        facecolors="none",
        edgecolors=ANOMALY_COLOUR,
        linewidths=2,
        zorder=3,
        label="this run",
    )
    ax.set_xticks(x, [_label(v, 16) for v in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("anomaly share (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    return _to_base64(fig)


def drift_bars(feature_names: Sequence[str], psi: Sequence[float], threshold: float) -> str | None:
    """Horizontal bars of each feature's PSI against the previous run, with the drift threshold."""
    psi = np.asarray(psi, dtype=np.float64)
    if psi.size == 0:
        return None
    shown = min(psi.size, 20)
    fig = _new_figure(8, 0.3 * shown + 1.0)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(shown)[::-1]
    colours = [ANOMALY_COLOUR if v >= threshold else NORMAL_COLOUR for v in psi[:shown]]
    ax.barh(y, np.minimum(psi[:shown], 10), color=colours)
    ax.set_yticks(y, [_label(n, 30) for n in feature_names[:shown]], fontsize=8)
    ax.axvline(
        threshold,
        color=THRESHOLD_COLOUR,
        linestyle="--",
        linewidth=1,
        label=f"drift threshold (PSI {threshold:g})",
    )
    ax.set_xlabel("PSI against the previous run")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.25)
    return _to_base64(fig)
