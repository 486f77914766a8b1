import json
import os
from pathlib import Path

import pytest

from anomaly_detection import runs
from anomaly_detection.report import index as report_index
from anomaly_detection.report.index import (
    ReportNotFound,
    ReportPathError,
    UnsafeReportPath,
    list_runs,
    report_url,
    resolve_report,
)

SECRET = "TOP-SECRET-outside-the-reports-dir"


@pytest.fixture
def layout(tmp_path):
    """reports/ with real reports, an approved/ copy, a text file, and symlinks in and out; a secret outside."""
    reports = tmp_path / "reports"
    (reports / "approved").mkdir(parents=True)
    (reports / "r1.html").write_text("<html>r1</html>")
    (reports / "manual__2026-11-27T06_44_18.710293_00_00.html").write_text("<html>airflow id</html>")
    (reports / "approved" / "r1.html").write_text("<html>approved r1</html>")
    (reports / "notes.txt").write_text("not a report")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text(SECRET)
    (outside / "secret.txt").write_text(SECRET)
    (reports / "escape.html").symlink_to(outside / "secret.html")  # absolute target outside
    (reports / "escape-rel.html").symlink_to(
        Path("..") / "outside" / "secret.html"
    )  # relative target outside
    (reports / "inside-link.html").symlink_to("r1.html")  # a symlink that stays inside
    (reports / "txt-link.html").symlink_to("notes.txt")  # .html name, not an .html file
    (reports / "linked-dir").symlink_to(outside, target_is_directory=True)
    (reports / "dangling.html").symlink_to(tmp_path / "nowhere.html")  # dangling, outside
    (reports / "dangling-in.html").symlink_to("gone.html")  # dangling, inside
    return reports, outside


def test_plain_reports_resolve_to_real_files(layout):
    reports, _ = layout
    assert resolve_report(reports, "r1.html") == (reports / "r1.html").resolve()
    assert resolve_report(reports, "approved/r1.html").read_text() == "<html>approved r1</html>"
    name = "manual__2026-11-27T06_44_18.710293_00_00.html"
    assert resolve_report(reports, name).read_text() == "<html>airflow id</html>"
    # a symlink whose target stays inside the reports directory is fine
    assert resolve_report(reports, "inside-link.html") == (reports / "r1.html").resolve()


@pytest.mark.parametrize(
    "requested",
    [
        "../outside/secret.html",
        "..",
        "../",
        "approved/../../outside/secret.html",
        "approved/../r1.html",  # even when it would land inside: '..' is never accepted
        "./r1.html",
        "approved//r1.html",
        "%2e%2e%2foutside%2fsecret.html",  # encoded traversal the server did not decode
        "..%2foutside%2fsecret.html",
        "%252e%252e%252foutside%252fsecret.html",  # double-encoded
        "r1%2ehtml",
        "/etc/passwd",
        "/" + "x/../r1.html",
        "//etc/passwd.html",
        "~/secret.html",
        "C:/Windows/win.ini.html",
        "..\\outside\\secret.html",
        "approved\\r1.html",
        "r1.html\x00.txt",
        "r1\n.html",
        "notes.txt",
        "r1",
        ".html",
        ".hidden.html",
        "r1.html/",
        "",
        "a/b/c/d/e.html",
        "x" * 2000 + ".html",
        "ré.html",
        "escape.html",  # symlink to an absolute path outside
        "escape-rel.html",  # symlink with a relative target outside
        "linked-dir/secret.html",  # a directory symlink leading outside
        "txt-link.html",  # resolves to a .txt file
        "dangling.html",  # a dangling symlink pointing outside
    ],
)
def test_anything_but_a_plain_report_inside_is_refused(layout, requested):
    reports, _ = layout
    with pytest.raises(UnsafeReportPath):
        resolve_report(reports, requested)


def test_refusals_and_misses_share_one_error_type_and_never_read_the_outside(layout):
    reports, outside = layout
    for requested in ("missing.html", "approved/missing.html", "dangling-in.html", "approved.html"):
        with pytest.raises(ReportNotFound):
            resolve_report(reports, requested)
    for requested in ("../outside/secret.html", "escape.html", "missing.html"):
        with pytest.raises(ReportPathError) as err:
            resolve_report(reports, requested)
        assert SECRET not in str(err.value) and str(outside) not in str(err.value)
    with pytest.raises(UnsafeReportPath):
        resolve_report(reports, None)  # type: ignore[arg-type]
    with pytest.raises(ReportNotFound):
        resolve_report(reports.parent / "no-such-dir", "r1.html")


def test_reports_dir_given_through_a_symlink_still_confines(layout, tmp_path):
    reports, _ = layout
    alias = tmp_path / "reports-alias"
    alias.symlink_to(reports, target_is_directory=True)
    assert resolve_report(alias, "r1.html") == (reports / "r1.html").resolve()
    with pytest.raises(UnsafeReportPath):
        resolve_report(alias, "escape.html")


def test_report_url_uses_the_safe_run_id_and_the_base_path(monkeypatch):
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    assert report_url("r1") == "/anomaly-reports/report/r1.html"
    assert report_url("manual__2026-11-27T06:44:18.710293+00:00") == (
        "/anomaly-reports/report/manual__2026-11-27T06_44_18.710293_00_00.html"
    )
    assert report_url("r1", base_path="/airflow/") == "/airflow/anomaly-reports/report/r1.html"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://example.org/airflow")
    assert report_url("r1") == "/airflow/anomaly-reports/report/r1.html"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080")
    assert report_url("r1") == "/anomaly-reports/report/r1.html"
    assert report_index.airflow_base_path("http://h/x/y/") == "/x/y"
    assert report_index.listing_url("/airflow") == "/airflow/anomaly-reports/"
    # what report_url produces, resolve_report accepts (after the server's decoding)
    assert report_url("a b/c").rsplit("/", 1)[1] == "a_b_c.html"


def _run(runs: Path, run_id: str, results=None, decision=None, raw_results: str | None = None) -> Path:
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    if raw_results is not None:
        (run_dir / "results.json").write_text(raw_results)
    elif results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    if decision is not None:
        (run_dir / "decision.json").write_text(
            decision if isinstance(decision, str) else json.dumps(decision)
        )
    return run_dir


def _results(run_id, finished, *, status="succeeded", name="demo", count=50, share=0.05, algorithm="kmeans"):
    return {
        "run_id": run_id,
        "name": name,
        "status": status,
        "source_url": "http://127.0.0.1:8765/records",
        "started_at": finished.replace(":05", ":00"),
        "finished_at": finished,
        "rows": {"ingested": 1010, "after_duplicates": 1000},
        "best": {
            "algorithm": algorithm,
            "params": {"n_clusters": 3},
            "anomaly_count": count,
            "anomaly_share": share,
        },
        "rerun_of": None,
    }


def test_list_runs_newest_first_with_decisions(tmp_path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    reports.mkdir()
    _run(
        runs,
        "old",
        _results("old", "2026-11-20T10:00:05+00:00"),
        {"decision": "approved", "by": "ana", "at": "2026-11-20T11:00:00+00:00", "comment": "ok"},
    )
    _run(
        runs,
        "new",
        _results("new", "2026-11-27T10:00:05+00:00", algorithm="isolation_forest", count=7, share=0.007),
    )
    _run(
        runs,
        "mid",
        _results("mid", "2026-11-25T10:00:05+00:00"),
        {"decision": "rejected", "by": "bo", "at": "2026-11-25T12:00:00+00:00"},
    )
    _run(runs, "broken", _results("broken", "2026-11-26T10:00:05+00:00", status="failed"))
    for run_id in ("old", "new", "mid"):
        (reports / f"{run_id}.html").write_text("<html></html>")
    (runs / "history.jsonl").write_text("{}\n")  # files beside the run directories are ignored

    records = list_runs(reports, runs)
    assert [r.run_id for r in records] == ["new", "broken", "mid", "old"]
    new, broken, mid, old = records
    assert (new.name, new.rows, new.anomalies, new.share, new.best_model) == (
        "demo",
        1000,
        7,
        0.007,
        "isolation_forest",
    )
    assert (
        new.finished_at == "2026-11-27T10:00:05+00:00"
        and new.decision is None
        and new.review == report_index.WAITING
    )
    assert new.report_exists and new.report_url == "report/new.html"
    assert (old.decision, old.decided_by, old.decided_at, old.comment) == (
        "approved",
        "ana",
        "2026-11-20T11:00:00+00:00",
        "ok",
    )
    assert mid.review == "rejected"
    assert broken.review == "run failed" and broken.report_url is None and not broken.report_exists
    assert all(r.problem is None for r in records)
    assert list_runs(reports, runs, limit=2) == records[:2]


def test_list_runs_survives_half_written_missing_and_corrupt_files(tmp_path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    reports.mkdir()
    _run(runs, "good", _results("good", "2026-11-27T10:00:05+00:00"))
    _run(runs, "half", raw_results='{"run_id": "half", "status": "succ')  # being written
    _run(runs, "empty", raw_results="")
    _run(runs, "array", raw_results="[1, 2]")
    _run(runs, "binary", raw_results="")
    (runs / "binary" / "results.json").write_bytes(b"\xff\xfe\x00garbage")
    _run(runs, "running")  # no results.json yet
    _run(
        runs,
        "odd-types",
        {
            "name": {"x": 1},
            "status": 3,
            "rows": "many",
            "best": ["not", "a", "dict"],
            "finished_at": "yesterday",
        },
    )
    _run(runs, "bad-decision", _results("bad-decision", "2026-11-26T10:00:05+00:00"), decision="{not json")
    _run(runs, "nan", _results("nan", "2026-11-26T09:00:05+00:00", share=float("nan")))
    unreadable = _run(runs, "unreadable", _results("unreadable", "2026-11-26T08:00:05+00:00"))
    os.chmod(unreadable / "results.json", 0)
    (reports / "orphan.html").write_text("<html>run dir deleted</html>")
    (tmp_path / "secret.html").write_text("outside")
    (reports / "escape.html").symlink_to(tmp_path / "secret.html")  # not a report: not listed
    _run(runs, "linked", _results("linked", "2026-11-26T07:00:05+00:00"))
    (reports / "linked.html").symlink_to(tmp_path / "secret.html")  # its "report" leads outside: no link
    (runs / ".hidden").mkdir()

    records = {r.run_id: r for r in list_runs(reports, runs)}
    assert set(records) == {
        "good",
        "half",
        "empty",
        "array",
        "binary",
        "running",
        "odd-types",
        "bad-decision",
        "nan",
        "unreadable",
        "orphan",
        "linked",
    }
    assert not records["linked"].report_exists and records["linked"].report_url is None
    assert records["good"].problem is None
    assert "not valid JSON" in records["half"].problem and records["half"].status is None
    assert "not valid JSON" in records["empty"].problem
    assert "not a JSON object" in records["array"].problem
    assert records["binary"].problem
    assert "not written yet" in records["running"].problem and records["running"].review == "no report"
    odd = records["odd-types"]
    assert (odd.name, odd.rows, odd.anomalies, odd.best_model) == (None, None, None, None)
    assert "decision.json" in records["bad-decision"].problem and records["bad-decision"].decision is None
    assert records["nan"].share is None
    if os.geteuid() != 0:  # root reads anything
        assert records["unreadable"].problem
    orphan = records["orphan"]
    assert (
        orphan.report_exists
        and orphan.report_url == "report/orphan.html"
        and orphan.problem == "run directory not found"
    )


def test_list_runs_with_missing_directories(tmp_path):
    assert list_runs(tmp_path / "no-reports", tmp_path / "no-runs") == []
    runs = tmp_path / "runs"
    _run(runs, "r1", _results("r1", "2026-11-27T10:00:05+00:00"))
    [record] = list_runs(tmp_path / "no-reports", runs)
    assert record.run_id == "r1" and not record.report_exists and record.review == "no report"


def test_directories_default_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ANOMALY_REPORTS_DIR", str(tmp_path / "rep"))
    monkeypatch.setenv("ANOMALY_RUNS_DIR", str(tmp_path / "run"))
    assert runs.reports_dir() == tmp_path / "rep" and runs.runs_dir() == tmp_path / "run"
    monkeypatch.delenv("ANOMALY_REPORTS_DIR")
    assert runs.reports_dir() == runs.PROJECT_ROOT / "reports"
