"""Stage warnings, validation stops and several URLs, through the CLI against a loopback API."""

import json
import random
import re
from pathlib import Path

import pandas as pd
from demo_process import run_cli
from http_fixtures import api_server  # noqa: F401
from markupsafe import escape

ODD_NAME = "<b>note</b>"


def records(n: int, seed: int, *, sparse_share: float = 0.7) -> list[dict]:
    """Numeric measures, a mostly missing one, and a text column whose name needs escaping."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {"temp": rng.gauss(20, 2), "load": rng.gauss(50, 5), ODD_NAME: f"text {i}"}
        row["rare"] = None if rng.random() < sparse_share else rng.gauss(1, 0.1)
        rows.append(row)
    rows[3]["temp"] = 95.0
    return rows


def run(tmp_path: Path, run_id: str, *sets: str):
    args = ["run", "--config", "configs/any_api.yaml", "--quiet", "--run-id", run_id]
    base = [
        f"output.runs_dir={tmp_path / 'runs'}",
        f"output.reports_dir={tmp_path / 'reports'}",
        "modeling.algorithms=[isolation_forest, kmeans]",
        "evaluation.selection=metric",
        "processing.mode=native",
    ]
    for item in [*base, *sets]:
        args += ["--set", item]
    return run_cli(*args, timeout=300), tmp_path / "runs" / run_id


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_several_urls_one_snapshot_each_source_column_never_a_feature(api_server, tmp_path):  # noqa: F811
    api_server.json("/eu", {"items": records(80, 1)})
    api_server.json("/us", {"items": records(70, 2)})
    urls = [api_server.url("/eu") + "?api_key=s3cr3tvalue", api_server.url("/us")]
    out, run_dir = run(tmp_path, "multi", "source.url=" + json.dumps(urls))
    assert out.returncode == 0, out.stderr

    for n, served in ((1, 80), (2, 70)):
        manifest = json.loads((run_dir / "raw" / f"source-{n}" / "manifest.json").read_text())
        assert len(manifest) == 1 and manifest[0]["url"].split("?")[0] == urls[n - 1].split("?")[0]
    table = pd.read_parquet(run_dir / "flattened.parquet")
    assert len(table) == 150
    counts = table["_source"].value_counts().to_dict()
    assert counts == {api_server.url("/eu") + "?api_key=***": 80, api_server.url("/us"): 70}

    results = results_of(run_dir)
    assert "_source" not in results["features"] and {"temp", "load"} <= set(results["features"])
    summary = json.loads((run_dir / "data_summary.json").read_text())
    assert summary["columns_dropped"]["_source"] == "source of the record"
    everything = "".join(
        p.read_text(errors="replace") for p in run_dir.rglob("*") if p.suffix in (".json", ".html")
    )
    assert "s3cr3tvalue" not in everything

    replay = run_cli("replay", str(run_dir), "--quiet", "--run-id", "multi-replay", timeout=300)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "differs" not in replay.stdout


def test_each_stage_warning_reaches_results_and_the_escaped_report(api_server, tmp_path):  # noqa: F811
    rows = records(60, 3)
    rows += [dict(rows[0]) for _ in range(15)]  # 15 of 75 rows repeat the first: 20 % duplicates
    first, second = {"items": rows[:40], "next": "abc"}, {"items": rows[40:], "next": "abc"}
    api_server.route("/data", lambda req: (200, {}, second if req.query.get("cursor") else first))
    out, run_dir = run(
        tmp_path,
        "warned",
        f"source.url={api_server.url('/data')}",
        "source.pagination.type=cursor",
        "source.pagination.cursor_path=next",
    )
    assert out.returncode == 0, out.stderr
    warnings = results_of(run_dir)["warnings"]
    ingest = json.loads((run_dir / "ingest.json").read_text())
    assert ingest["warnings"] and all(f"ingest: {w}" in warnings for w in ingest["warnings"])
    assert any(w.startswith("records auto-detected: ") for w in warnings)
    assert any("column(s) not used as features" in w and ODD_NAME in w for w in warnings)
    assert any(re.match(r"column rare: \d+% of its values missing, imputed", w) for w in warnings)
    assert "20% of the rows are duplicates (15 of 75), each one scored" in warnings

    report = (run_dir / "report.html").read_text()
    box = report[report.index('id="warnings"') :]
    for warning in warnings:
        assert str(escape(warning)) in box
    assert ODD_NAME not in report
    assert re.search(rf'<div class="v bad">{len(warnings)}</div><div class="l">warnings</div>', report)


def test_cli_report_names_the_source_and_how_to_review(api_server, tmp_path):  # noqa: F811
    api_server.json("/v1/quakes", records(50, 4, sparse_share=0.0))
    out, run_dir = run(tmp_path, "titled", f"source.url={api_server.url('/v1/quakes')}")
    assert out.returncode == 0, out.stderr
    report = (run_dir / "report.html").read_text()
    assert "Anomaly report: 127.0.0.1/v1/quakes" in report
    assert "in Airflow" not in report[report.index('id="decision"') :][:600]
    assert "anomalies.csv" in report and "--rerun-of titled" in report
    named, named_dir = run(tmp_path, "named", f"source.url={api_server.url('/v1/quakes')}", "name=quakes")
    assert named.returncode == 0, named.stderr
    assert "Anomaly report: quakes" in (named_dir / "report.html").read_text()


def assert_stopped(out, run_dir: Path, message: str) -> None:
    assert out.returncode == 1
    assert message in out.stderr
    results = results_of(run_dir)
    assert results["status"] == "failed" and message in results["error"]
    assert (run_dir / "raw" / "manifest.json").is_file()
    assert list((run_dir / "raw").glob("page-*"))
    assert not (run_dir / "report.html").exists()


def test_too_few_rows_stop_the_run_keeping_the_snapshot(api_server, tmp_path):  # noqa: F811
    api_server.json("/few", records(12, 5, sparse_share=0.0))
    out, run_dir = run(tmp_path, "few", f"source.url={api_server.url('/few')}")
    assert_stopped(out, run_dir, "validation.min_rows: 12 row(s) ingested, fewer than 20")


def test_mostly_missing_feature_cells_stop_the_run(api_server, tmp_path):  # noqa: F811
    api_server.json("/sparse", records(60, 6, sparse_share=0.8))
    out, run_dir = run(
        tmp_path, "sparse", f"source.url={api_server.url('/sparse')}", "validation.max_missing_share=0.1"
    )
    share = json.loads((run_dir / "data_summary.json").read_text())
    missing = share["imputed_values"] / (share["rows_after"] * len(share["features"]))
    assert_stopped(
        out,
        run_dir,
        f"validation.max_missing_share: {missing:.1%} of the feature cells missing, more than 10.0%",
    )


def test_too_few_feature_columns_stop_the_run(api_server, tmp_path):  # noqa: F811
    api_server.json("/narrow", records(60, 7, sparse_share=0.0))
    out, run_dir = run(
        tmp_path, "narrow", f"source.url={api_server.url('/narrow')}", "validation.min_features=5"
    )
    assert_stopped(out, run_dir, "validation.min_features: 3 usable feature column(s), fewer than 5")
