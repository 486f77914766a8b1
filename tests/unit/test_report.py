"""Tests of the self-contained HTML report (anomaly_detection.report.render and .plots)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_detection.report import figures, plots
from anomaly_detection.report.format import format_cell, format_number, format_percent
from anomaly_detection.report.inputs import ReportInputs
from anomaly_detection.report.render import render_report

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG = '<img src="data:image/png;base64,'
ALGORITHMS = ["isolation_forest", "local_outlier_factor", "kmeans_distance"]


def _model(algorithm: str, i: int, count: int, n_rows: int, **extra: object) -> dict:
    return {
        "algorithm": algorithm,
        "params": {"contamination": 0.05, "n_estimators": 100 + i},
        "metric": "silhouette",
        "score": 0.3 + 0.05 * i,
        "silhouette": 0.3 + 0.05 * i,
        "davies_bouldin": 1.2 - 0.1 * i,
        "calinski_harabasz": 1234.5 * (i + 1),
        "anomaly_count": count,
        "anomaly_share": count / n_rows,
        "seconds": 0.123 * (i + 1),
        "flags": ["high anomaly share"] if i == 0 else [],
        **extra,
    }


def make_inputs(
    *,
    n_features: int = 4,
    n_sample: int = 300,
    n_rows: int = 1_000,
    heatmap: bool = True,
    anomalies: int = 37,
    decision: dict | None = None,
    hostile: bool = False,
) -> ReportInputs:
    rng = np.random.default_rng(7)
    names = [f"f{i}" for i in range(n_features)]
    if hostile:
        names[0] = HOSTILE + " $x_1$"
    features = rng.normal(size=(n_sample, n_features))
    sample_labels = np.zeros(n_sample, dtype=int)
    sample_labels[: min(anomalies, n_sample) // 3] = 1
    scores = rng.normal(size=n_rows)
    threshold = float(np.sort(scores)[-anomalies]) if anomalies else float(scores.max() + 1.0)

    preview = pd.DataFrame(
        {
            "id": np.arange(5),
            "name": ["a", "b", HOSTILE if hostile else "c", None, "e"],
            "amount": [1.234567, np.nan, 3.0, 1e7 + 0.5, -2.5e-6],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", None, "2024-01-04", "2024-01-05"]),
            "tags": [["x", "y"], [], None, ["z"], ["<b>"]],
        }
    )
    if hostile:
        preview[HOSTILE] = "col"
    top = pd.DataFrame(
        {
            "rank": np.arange(1, min(anomalies, 10) + 1),
            "score": np.sort(scores)[::-1][: min(anomalies, 10)],
            "name": [HOSTILE if hostile and i == 0 else f"row{i}" for i in range(min(anomalies, 10))],
        }
    )
    models = [_model(a, i, anomalies + i, n_rows) for i, a in enumerate(ALGORITHMS)]
    best = dict(models[1], threshold=threshold)
    log_text = "2024-01-01 INFO start\n2024-01-01 WARNING 3 rows dropped\n"
    if hostile:
        log_text += f"2024-01-01 INFO value {HOSTILE}\n"
    return ReportInputs(
        run={
            "run_id": "run-20240101-abc123",
            "name": "demo",
            "status": "awaiting review",
            "source_url": "https://api.example.com/items?token=***",
            "started_at": "2024-01-01T00:00:00+00:00",
            "finished_at": "2024-01-01T00:01:05+00:00",
            "duration_seconds": 65.4,
            "versions": {"python": "3.11", "scikit-learn": "1.5"},
            "rerun_of": None,
        },
        config={"source": {"url": "https://api.example.com/items", "token": "***"}, "models": ALGORITHMS},
        summary={
            "rows_before": 1_050,
            "rows_after": n_rows,
            "columns_before": 9,
            "duplicates": 50,
            "duplicates_flagged": 3,
            "missing_per_column": {"amount": 12, "name": 0},
            "dtypes": {"id": "int64", "name": "object", "amount": "float64"},
            "columns_dropped": {"name": "text column", "constant": "constant"},
            "features": names,
            "imputed_values": 12,
            "imputation": "kmeans (8 clusters)",
            "infinite_values": 0,
        },
        preview=preview,
        models=models,
        best=best,
        features=features,
        feature_names=names,
        sample_labels=sample_labels,
        scores=scores,
        threshold=threshold,
        top_anomalies=top,
        log_text=log_text,
        correlation_heatmap=heatmap,
        decision=decision,
        warnings=["anomaly share above 20%"],
    )


def render(directory: Path, inputs: ReportInputs, name: str = "report.html") -> str:
    path = render_report(inputs, directory / "sub" / name)
    assert path == directory / "sub" / name
    assert path.is_file()
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def hostile_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real render (heatmap on, hostile strings everywhere, no decision), shared by tests."""
    return render(tmp_path_factory.mktemp("hostile"), make_inputs(hostile=True))


@pytest.fixture
def fake_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing for tests about the HTML only (keeps the suite fast)."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    for name in ("correlation_heatmap", "score_distribution", "model_comparison", "pca_scatter"):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: png)


def test_report_contains_the_run_models_and_figures(hostile_html: str) -> None:
    html = hostile_html
    inputs = make_inputs(hostile=True)
    assert html.startswith("<!DOCTYPE html>")
    assert "run-20240101-abc123" in html
    for algorithm in ALGORITHMS:
        assert algorithm in html
    best_count = inputs.best["anomaly_count"]
    assert f'<span class="big">{best_count}</span>' in html
    assert html.count(IMG) == 4
    # every figure is a real PNG
    images = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    # the best configuration is highlighted, exactly once
    assert html.count('<tr class="best">') == 1
    best_row = html.split('<tr class="best">')[1].split("</tr>")[0]
    assert inputs.best["algorithm"] in best_row
    # summary, warnings and config
    assert 'id="warnings"' in html and "anomaly share above 20%" in html
    assert "kmeans (8 clusters)" in html
    assert "50 duplicate rows (3 of them flagged)" in html
    assert "text column" in html
    assert "token: &#39;***&#39;" in html
    assert "1 min 05.4 s" in html
    # no review decision yet: the banner says the run waits for review
    assert (
        html.count('class="banner') == 1
        and '<div class="banner pending" id="decision"><strong>Waiting for review</strong>' in html
    )


def test_report_loads_nothing_from_outside(hostile_html: str) -> None:
    html = hostile_html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    # one script, the report's own inline table sorter; nothing API-made turns into a script
    assert html.lower().count("<script") == 1 and "<script>\n/* Sortable tables" in html
    assert "<link" not in html.lower()
    assert "@import" not in html
    assert "url(" not in html
    # the source URL is shown as text only
    assert "https://api.example.com/items?token=***" in html


def test_hostile_strings_are_escaped_everywhere(hostile_html: str) -> None:
    html = hostile_html
    assert HOSTILE not in html
    assert "<b>" not in html
    # preview cell, preview column name, feature name, top-anomaly cell, log line
    assert html.count(ESCAPED) >= 5
    data = html.split('id="data"')[1].split('id="run"')[0]
    assert f">{ESCAPED}</th>" in data
    assert f"<td>{ESCAPED}</td>" in data
    assert f"<li>{ESCAPED} $x_1$</li>" in data  # feature list
    top = html.split('id="top"')[1].split('id="logs"')[0]
    assert f"<td>{ESCAPED}</td>" in top
    logs = html.split('id="logs"')[1]
    assert f"value {ESCAPED}" in logs


def test_heatmap_off_draws_one_figure_fewer(tmp_path: Path) -> None:
    off = render(tmp_path, make_inputs(heatmap=False))
    assert off.count(IMG) == 3
    assert 'id="fig-heatmap"' not in off
    assert 'id="fig-scores"' in off and 'id="fig-models"' in off and 'id="fig-scatter"' in off


@pytest.mark.parametrize(
    ("kind", "title", "css"),
    [
        ("approved", "Approved", "approved"),
        ("rejected", "Rejected", "rejected"),
        ("rerun", "Rerun requested", "rerun"),
    ],
)
def test_decision_banner(tmp_path: Path, fake_figures: None, kind: str, title: str, css: str) -> None:
    decision = {
        "decision": kind,
        "by": "alice",
        "at": "2024-01-02T10:00:00Z",
        "comment": f"looks {HOSTILE}",
        "adjustments": {"contamination": 0.02} if kind == "rerun" else {},
    }
    html = render(tmp_path, make_inputs(decision=decision))
    assert html.count('class="banner') == 1
    banner = html.split(f'<div class="banner {css}" id="decision">')[1].split("</div>")[0]
    assert f"<strong>{title}</strong> by alice at 2024-01-02T10:00:00Z: looks {ESCAPED}" in banner
    assert HOSTILE not in html
    assert ("contamination: 0.02" in html) == (kind == "rerun")


def test_renders_with_missing_metrics_and_no_anomalies(tmp_path: Path) -> None:
    inputs = make_inputs(anomalies=0)
    for m in [*inputs.models, inputs.best]:
        for key in ("score", "silhouette", "davies_bouldin", "calinski_harabasz"):
            m[key] = None
        m["anomaly_count"], m["anomaly_share"] = 0, 0.0
    inputs.sample_labels = np.zeros_like(inputs.sample_labels)
    inputs.top_anomalies = inputs.top_anomalies.iloc[0:0]
    inputs.preview = pd.DataFrame()
    inputs.warnings = []
    inputs.log_text = ""
    inputs.summary = {}
    html = render(tmp_path, inputs)
    assert html.count(IMG) == 4
    assert "No rows were flagged as anomalies." in html
    assert "The API table is empty" in html
    assert '<span class="big">0</span>' in html
    assert 'id="warnings"' not in html
    body = html.split("<main>")[1]
    assert ">None<" not in body and ">nan<" not in body.lower()


def test_label_metrics_are_shown_when_present(tmp_path: Path, fake_figures: None) -> None:
    inputs = make_inputs()
    for m in [*inputs.models, inputs.best]:
        m.update(roc_auc=0.91234, pr_auc=0.5, precision=0.75, recall=0.6, f1=0.6667)
    html = render(tmp_path, inputs)
    assert "ROC AUC" in html and "PR AUC" in html and ">F1<" in html
    assert html.count("0.9123") == len(inputs.models) + 1  # table rows and best card
    without = render(tmp_path, make_inputs(), "plain.html")
    assert "ROC AUC" not in without


def test_single_feature(tmp_path: Path) -> None:
    html = render(tmp_path, make_inputs(n_features=1, heatmap=True))
    # heatmap skipped with a note; scores, comparison and 1-D scatter drawn
    assert html.count(IMG) == 3
    assert "needs at least two features" in html
    assert "Anomalies along the single feature" in html


def test_plots_handle_degenerate_inputs() -> None:
    assert plots.correlation_heatmap(np.ones((10, 1)), ["a"]) is None
    assert plots.score_distribution(np.array([np.nan, np.inf]), 1.0) is None
    assert plots.score_distribution(np.full(5, 2.0), 2.0)  # constant scores
    assert plots.model_comparison([]) is None
    assert plots.pca_scatter(np.empty((0, 3)), np.empty(0), ["a", "b", "c"]) is None
    # constant columns and a mathtext-looking name must not break the heatmap
    x = np.column_stack([np.ones(20), np.arange(20.0), np.arange(20.0) ** 2])
    assert plots.correlation_heatmap(x, ["$a", "b_{1}$", "\\c"])


def test_number_formatting() -> None:
    assert format_number(None) == "—"
    assert format_number(float("nan")) == "—"
    assert format_number(1234) == "1,234"
    assert format_number(np.int64(5)) == "5"
    assert format_number(0.123456) == "0.1235"
    assert format_number(12345.678) == "12,346"
    assert format_number(2.0) == "2"
    assert format_percent(0.05) == "5%"
    assert format_percent(None) == "—"
    assert format_cell(pd.NA) == "—"
    assert format_cell(["a", 1]) == '["a", 1]'
    assert format_cell("x" * 500).endswith("…")


def test_the_new_sections_escape_names_from_the_api(tmp_path: Path) -> None:
    """Explanations, the time view, history, drift and the rerun diff carry API names and values."""
    import pandas as pd

    from anomaly_detection.report import history, timeline
    from anomaly_detection.report.insights import HistoryView, TimeView
    from anomaly_detection.report.rerun_diff import RerunDiff

    inputs = make_inputs(hostile=True)
    n = 50
    times = (np.datetime64("2026-01-01T00:00:00") + np.arange(n) * np.timedelta64(1, "h")).astype(
        "datetime64[ns]"
    )
    inputs.explained_features = {HOSTILE: 3}
    inputs.explained_rows = 3
    inputs.time_view = TimeView(
        column=HOSTILE, configured=False, times=times, values=np.arange(n, dtype=float).reshape(n, 1),
        anomalies=np.r_[np.zeros(n - 2), np.ones(2)], feature_names=[HOSTILE],
        buckets=timeline.bucket_counts(times.astype(np.int64), np.array([1, 2])),
    )  # fmt: skip
    previous = {"run_id": HOSTILE, "finished_at": "2026-01-01T00:00:00Z", "rows": 10, "anomaly_count": 1, "anomaly_share": 0.1,
                "best": {"algorithm": HOSTILE, "params": {HOSTILE: HOSTILE}}, "report": f"{HOSTILE}.html"}  # fmt: skip
    current = {**previous, "run_id": "run-20240101-abc123", "report": "now.html"}
    drift = history.FeatureDrift(HOSTILE, 1.0, 2.0, 0.5, 0.3, 0.05)
    inputs.history = HistoryView("key", [previous, current], previous, [drift])
    inputs.rerun = RerunDiff(
        previous_run=HOSTILE, previous_count=1, current_count=2, kept=1, new_count=1, gone_count=0,
        new=pd.DataFrame({HOSTILE: [HOSTILE]}), gone=pd.DataFrame({HOSTILE: []}), changes=[(HOSTILE, HOSTILE, 1)],
    )  # fmt: skip
    html = render(tmp_path, inputs)
    assert HOSTILE not in html and "<b>" not in html
    for name in ("time", "history", "rerun", "top"):
        start = html.index(f'id="{name}"')
        assert ESCAPED in html[start : html.index("</section>", start)], name
    assert html.lower().count("<script") == 1
    assert 'href="&lt;script&gt;alert(1)&lt;/script&gt;.html"' in html  # a link, never markup


def _broken_figure(*_: object) -> str:
    raise ValueError("no axes for this")


def test_figures_drawn_in_worker_processes_match_those_drawn_here() -> None:
    rng = np.random.default_rng(3)
    scores = rng.gamma(2.0, size=2_000)
    features = rng.normal(size=(500, 4))
    jobs = {
        "scores": figures.FigureJob(plots.score_distribution, (scores, 6.0)),
        "heatmap": figures.FigureJob(plots.correlation_heatmap, (features, ["a", "b", "c", "d"])),
        "broken": figures.FigureJob(_broken_figure, (features,)),
    }
    here = figures.draw_all(jobs, workers=1)
    forked = figures.draw_all(jobs, workers=2)
    assert forked.images == here.images
    assert here.images["scores"] and here.images["heatmap"]
    assert forked.images["broken"] is None
    assert forked.errors["broken"] == "This figure could not be drawn: ValueError: no axes for this"
    assert set(forked.seconds) == set(jobs)
