"""The report's explanations, time view, run history, drift and rerun diff, from real demo runs.

The demo API runs as its own process (as `make demo` starts it) with a distribution that shifts
m01 and m02 by one standard deviation per run; the pipeline runs through the CLI.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import urllib.request

import pandas as pd
import pytest
from demo_process import run_demo, running_demo_api

DRIFTED = {"metrics.m01", "metrics.m02"}


def section(html: str, name: str) -> str:
    start = html.index(f'id="{name}"')
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def drifting_runs(tmp_path_factory):
    """Two successive demo runs against a drifting demo API; yields (tmp dir, planted columns)."""
    tmp = tmp_path_factory.mktemp("drift")
    with running_demo_api(rows=3000, seed=21, drift_per_run=1.0) as api:
        planted = json.loads(urllib.request.urlopen(api + "/planted").read())["columns"]
        for run_id in ("first", "second"):
            out = run_demo(api, tmp, run_id)
            assert out.returncode == 0, out.stderr
    return tmp, planted


def test_the_report_names_the_planted_column_for_the_planted_rows(drifting_runs):
    tmp, planted = drifting_runs
    anomalies = pd.read_csv(tmp / "runs" / "first" / "anomalies.csv")
    top = anomalies.head(50)
    html = (tmp / "reports" / "first.html").read_text()
    table = section(html, "top")
    found = top[top["id"].astype(str).isin(planted)]
    assert len(found) == len(planted), "every planted row is in the top list"
    for _, row in found.iterrows():
        first = row["top_features"].split(";")[0].rsplit(":", 1)[0]
        assert first.removeprefix("metrics.") in planted[str(row["id"])], (row["id"], row["explanation"])
        assert html_lib.escape(row["explanation"], quote=False) in table
    prose = " ".join(table.split())
    assert "as a robust z-score" in prose and "1.4826 × MAD" in prose


def test_the_time_view_uses_the_detected_timestamp(drifting_runs):
    tmp, _ = drifting_runs
    html = (tmp / "reports" / "first.html").read_text()
    time = section(html, "time")
    assert "<code>timestamp</code> (detected from its name and values)" in time
    assert time.count("data:image/png;base64,") == 2
    assert re.search(r"Anomalies per \d+ (minute|minutes|hour|hours|day)", time)


def test_the_second_run_shows_the_drift_the_trend_and_links_the_first(drifting_runs):
    tmp, _ = drifting_runs
    first = (tmp / "reports" / "first.html").read_text()
    assert "This is the first recorded run of this source" in section(first, "history")
    html = (tmp / "reports" / "second.html").read_text()
    history = section(html, "history")
    # a relative link: the reports sit side by side, in reports/ and behind the Airflow plugin alike
    assert '<a href="first.html" target="_blank" rel="noopener">open its report</a>' in history
    assert "drifted at PSI ≥ 0.2" in history
    rows = re.findall(r"<tr><td>([^<]+)</td>.*?<span class=\"level (\w+)\">", history, re.S)
    levels = dict(rows)
    assert {name for name, level in levels.items() if level == "drifted"} == DRIFTED
    assert len(levels) >= 12 and all(
        levels[n] == "stable" for n in levels if n.startswith("metrics.") and n not in DRIFTED
    )
    assert 'id="fig-trend"' in history and "(this run)" in history
    verdict = section(html, "verdict")
    assert "2 feature(s) drifted" in verdict
    lines = (tmp / "runs" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["first", "second"]


def test_a_rerun_shows_the_changed_parameters_and_rows(tmp_path):
    with running_demo_api(rows=2000, seed=5) as api:
        out = run_demo(api, tmp_path, "base", "modeling.contamination=0.02", "modeling.algorithms=[kmeans]")
        assert out.returncode == 0, out.stderr
        assert 'id="rerun"' not in (tmp_path / "reports" / "base.html").read_text()
        out = run_demo(
            api,
            tmp_path,
            "rerun",
            "modeling.contamination=0.06",
            "modeling.algorithms=[kmeans]",
            rerun_of="base",
        )
        assert out.returncode == 0, out.stderr
    base = pd.read_csv(tmp_path / "runs" / "base" / "anomalies.csv")
    rerun = pd.read_csv(tmp_path / "runs" / "rerun" / "anomalies.csv")
    html = (tmp_path / "reports" / "rerun.html").read_text()
    diff = section(html, "rerun")
    assert (
        f"Rerun of <code>base</code>: {len(base)} → {len(rerun)} anomalies (+{len(rerun) - len(base)})"
        in diff
    )
    assert (
        '<code>modeling.contamination</code></td><td class="mono">0.02</td><td class="mono">0.06</td>' in diff
    )
    fields = [c for c in rerun.columns if c not in ("rank", "score", "explanation", "top_features", "row")]
    keys = lambda f: list(map(tuple, f[fields].astype(str).to_numpy()))  # noqa: E731
    new = [k for k in keys(rerun) if k not in set(keys(base))]  # rows: each copy of a record counts
    gone = [k for k in keys(base) if k not in set(keys(rerun))]
    assert len(new) >= len(rerun) - len(base) > 0
    assert (
        f"<strong>{len(new)} newly flagged</strong>" in diff
        and f"<strong>{len(gone)} no longer flagged</strong>" in diff
    )
    newly = diff[diff.index("Newly flagged rows") : diff.index("No longer flagged")]
    first_new = next(r["id"] for _, r in rerun.iterrows() if tuple(r[fields].astype(str)) in new)
    assert re.search(rf"<td[^>]*>{first_new}</td>", newly)
