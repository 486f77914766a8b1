"""Time-indexed records through the whole CLI run: context, the time_series view, events, the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from demo_process import run_cli
from http_fixtures import api_server, json_body  # noqa: F401 (the fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_context import daily_series, plant_dip  # noqa: E402


def test_a_time_series_api_gets_context_events_and_explanations(api_server, tmp_path: Path) -> None:
    quiet, busy = daily_series(seed=2, level=10.0), daily_series(seed=3, level=1_000.0)
    dip = plant_dip(busy, "2026-03-16", 1_005.0)  # the night level at noon: inside the global range
    quiet["station"], busy["station"] = "quiet", "busy"
    frame = pd.concat([quiet, busy], ignore_index=True)
    records = [
        {"station": s, "observed_at": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "reading": round(float(v), 3)}
        for s, t, v in zip(frame["station"], frame["timestamp"], frame["value"])
    ]
    api_server.route("/readings", json_body(records))
    runs = tmp_path / "runs"
    out = run_cli(
        "run", "--config", "configs/any_api.yaml", "--quiet", "--run-id", "ts",
        "--set", f"source.url={api_server.url('/readings')}", "--set", "time.series_key=station",
        "--set", "processing.mode=native",
        "--set", f"output.runs_dir={runs}", "--set", f"output.reports_dir={tmp_path / 'reports'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = runs / "ts"
    results = json.loads((run_dir / "results.json").read_text())
    summary = json.loads((run_dir / "data_summary.json").read_text())
    context = summary["time_context"]
    assert context["applied"] and context["column"] == "observed_at" and context["series"] == 2
    assert context["measures"] == ["reading"] and context["seasonality"] == ["day"]

    planted = np.r_[np.zeros(len(quiet), bool), dip]
    anomalies = pd.read_csv(run_dir / "anomalies.csv")
    flagged = set(anomalies["row"])
    assert len(flagged & set(np.flatnonzero(planted))) >= planted.sum() // 2
    assert len(flagged - set(np.flatnonzero(planted))) <= 2  # the daily peaks stay quiet
    raised = anomalies[anomalies["row"].isin(np.flatnonzero(planted))]
    assert raised["explanation"].str.contains(r"reading [\d,.]+ vs [\d,.]+ typical at 1[12]:\d\d").any()
    assert "time view flags" in results["best"]["info"]["threshold_rule"]

    events = pd.read_csv(run_dir / "events.csv")
    assert results["events"]["count"] == len(events) >= 1
    top = events.iloc[0]
    assert top["series"] == "busy" and top["start"].startswith("2026-03-16T1")
    assert int(events["rows"].sum()) == len(anomalies)
    html = (run_dir / "report.html").read_text()
    assert 'id="events"' in html and "judged against its own series" in html and "one per station" in html
