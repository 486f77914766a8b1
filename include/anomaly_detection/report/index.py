"""The reports directory as a web server sees it: confined file lookup, the runs listing, report URLs.

Pure Python (no Airflow import): the Airflow plugin ``plugins/anomaly_reports.py`` serves what this
module finds, and the review gate's body links to :func:`report_url`.

* :func:`resolve_report` maps a requested relative path (as it arrived in a URL, already
  percent-decoded once by the web server) to a report file inside the reports directory, or raises
  :class:`UnsafeReportPath` / :class:`ReportNotFound`. Only plain relative paths made of safe name
  segments and ending in ``.html`` are accepted; the resolved file (symlinks followed) must still be
  inside the reports directory.
* :func:`list_runs` reads ``<runs_dir>/*/results.json`` and ``decision.json`` into :class:`RunRecord`
  rows, newest first. Half-written, missing or corrupt files never raise: the row says what is wrong.
* :func:`report_url` is the URL path of a run's published report served by the plugin.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from anomaly_detection.runs import safe_run_id

#: Where the plugin's FastAPI app is mounted on the Airflow API server (below Airflow's base path).
URL_PREFIX = "/anomaly-reports"
#: The Airflow UI route of the plugin's nav page (``/plugin/<route>`` shows the listing in an iframe).
UI_ROUTE = "anomaly-reports"
REPORT_SUFFIX = ".html"
WAITING = "waiting for review"

#: One path segment of a report: the characters ``safe_run_id`` keeps, not starting with a dot.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_MAX_REQUEST = 1024
_MAX_DEPTH = 4


class ReportPathError(Exception):
    """A requested report cannot be served (base class)."""


class UnsafeReportPath(ReportPathError, ValueError):
    """The request is not a plain report path inside the reports directory: refused, never looked up."""


class ReportNotFound(ReportPathError, LookupError):
    """The request is well formed but no such report file exists."""


# --- confined lookup ---------------------------------------------------------------------------------


def _check_request(requested: Any) -> list[str]:
    """The path's segments, or UnsafeReportPath saying why the text is refused."""
    if not isinstance(requested, str):
        raise UnsafeReportPath(f"report path must be text, got {type(requested).__name__}")
    if not requested or len(requested) > _MAX_REQUEST:
        raise UnsafeReportPath("report path is empty or too long")
    if "\x00" in requested:
        raise UnsafeReportPath("report path contains a NUL byte")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in requested):
        raise UnsafeReportPath("report path contains control characters")
    if "\\" in requested:
        raise UnsafeReportPath("report path contains a backslash")
    if "%" in requested:
        # The server decoded the URL once; a '%' left means (double) percent-encoding. Report names never
        # contain '%' (safe_run_id removes it), so refuse instead of decoding again.
        raise UnsafeReportPath("report path is still percent-encoded")
    if requested.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", requested):
        raise UnsafeReportPath("report path must be relative to the reports directory")
    segments = requested.split("/")
    if len(segments) > _MAX_DEPTH:
        raise UnsafeReportPath("report path is nested too deeply")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise UnsafeReportPath("report path contains an empty, '.' or '..' segment")
        if not _SEGMENT.fullmatch(segment):
            raise UnsafeReportPath("report path contains characters outside [A-Za-z0-9._-]")
    if not segments[-1].endswith(REPORT_SUFFIX) or segments[-1] == REPORT_SUFFIX:
        raise UnsafeReportPath(f"only {REPORT_SUFFIX} reports are served")
    return segments


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_report(reports_dir: str | os.PathLike[str], requested: str) -> Path:
    """The real path of the report file ``requested`` names inside ``reports_dir``.

    ``requested`` is a relative path such as ``<run_id>.html`` or ``approved/<run_id>.html``. Refused with
    :class:`UnsafeReportPath`: ``..`` / ``.`` / empty segments, absolute paths, ``~``, drive letters,
    backslashes, NUL and control characters, any ``%`` left after the server's decoding (encoded and
    double-encoded traversal), characters outside ``[A-Za-z0-9._-]``, names not ending in ``.html``, and
    files whose real path (every symlink resolved) is outside the reports directory. A well-formed path
    with no regular file behind it raises :class:`ReportNotFound`.
    """
    segments = _check_request(requested)
    root = os.path.realpath(os.fspath(reports_dir))
    if not os.path.isdir(root):
        raise ReportNotFound("the reports directory does not exist")
    candidate = os.path.join(root, *segments)
    real = os.path.realpath(candidate)
    if not _inside(real, root) or real == root:
        raise UnsafeReportPath("report path leads outside the reports directory")
    if not real.endswith(REPORT_SUFFIX):
        raise UnsafeReportPath(f"report path resolves to a file that is not {REPORT_SUFFIX}")
    if not os.path.isfile(real):
        raise ReportNotFound("no such report")
    return Path(real)


# --- URLs ------------------------------------------------------------------------------------------


def airflow_base_path(base_url: str | None = None) -> str:
    """The path part of Airflow's ``[api] base_url`` without a trailing slash ('' when served at the root).

    ``base_url`` defaults to ``AIRFLOW__API__BASE_URL`` from the environment.
    """
    if base_url is None:
        base_url = os.environ.get("AIRFLOW__API__BASE_URL", "")
    path = urlsplit(base_url).path if "://" in base_url else base_url
    return "/" + path.strip("/") if path.strip("/") else ""


def report_file_name(run_id: str) -> str:
    """The published report's file name of a run: ``<safe_run_id>.html``."""
    return safe_run_id(run_id) + REPORT_SUFFIX


def report_url(run_id: str, base_path: str | None = None) -> str:
    """URL path of a run's published report served by the plugin, e.g. ``/anomaly-reports/report/r1.html``.

    ``base_path`` is Airflow's base path ('' at the root; default: from ``AIRFLOW__API__BASE_URL``).
    """
    prefix = airflow_base_path() if base_path is None else base_path.rstrip("/")
    return f"{prefix}{URL_PREFIX}/report/{quote(report_file_name(run_id))}"


def listing_url(base_path: str = "") -> str:
    """URL path of the plugin's runs listing (the page the "Anomaly reports" nav entry shows)."""
    return f"{base_path.rstrip('/')}{URL_PREFIX}/"


# --- the runs listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One row of the runs listing."""

    run_id: str
    name: str | None = None
    status: str | None = None  # results.json "status": succeeded | failed | ... ; None when unreadable
    started_at: str | None = None
    finished_at: str | None = None
    rows: int | None = None
    anomalies: int | None = None
    share: float | None = None  # 0..1
    best_model: str | None = None
    source_url: str | None = None
    rerun_of: str | None = None
    decision: str | None = None  # approved | rejected | rerun | None (no decision yet)
    decided_by: str | None = None
    decided_at: str | None = None
    comment: str | None = None
    report_exists: bool = False
    report_name: str | None = None  # path relative to the reports directory
    problem: str | None = None  # what could not be read, if anything
    sort_key: float = 0.0

    @property
    def review(self) -> str:
        """The decision, or what stands in for one: 'waiting for review', 'run failed', 'no report'."""
        if self.decision:
            return self.decision
        if self.status == "failed":
            return "run failed"
        if not self.report_exists:
            return "no report"
        return WAITING

    @property
    def report_url(self) -> str | None:
        """URL path of the report below the plugin's prefix (relative: ``report/<name>``), if it exists."""
        return f"report/{quote(self.report_name)}" if self.report_exists and self.report_name else None


def read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None), (None, None) when the file is missing, (None, problem) when it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path.name}: unreadable ({type(exc).__name__})"
    try:
        data = json.loads(text)
    except ValueError:
        return None, f"{path.name}: not valid JSON (half-written?)"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value else None  # NaN -> None


def _timestamp(*values: Any) -> float | None:
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return None


def _rows(results: Mapping[str, Any]) -> int | None:
    rows = results.get("rows")
    if isinstance(rows, Mapping):
        for key in ("scored", "after_duplicates", "ingested"):  # after_duplicates: runs before issue 14
            if key in rows:
                return _int(rows.get(key))
        return None
    return _int(rows)


def _servable(reports: Path, name: str) -> bool:
    """Whether :func:`resolve_report` would serve ``name`` (a symlink leading outside is not a report)."""
    try:
        resolve_report(reports, name)
    except (ReportPathError, OSError):
        return False
    return True


def _record(run_dir: Path, reports: Path) -> RunRecord:
    results, problem = read_json(run_dir / "results.json")
    decision, decision_problem = read_json(run_dir / "decision.json")
    results = results or {}
    run_id = run_dir.name
    report_name = run_id + REPORT_SUFFIX
    report_exists = _servable(reports, report_name)
    best = results.get("best") if isinstance(results.get("best"), Mapping) else {}
    problems = [p for p in (problem, decision_problem) if p]
    if problem is None and not (run_dir / "results.json").exists():
        problems.append("results.json: not written yet")
    try:
        mtime = run_dir.stat().st_mtime
    except OSError:
        mtime = 0.0
    decision = decision or {}
    return RunRecord(
        run_id=run_id,
        name=_text(results.get("name")),
        status=_text(results.get("status")),
        started_at=_text(results.get("started_at")),
        finished_at=_text(results.get("finished_at")),
        rows=_rows(results),
        anomalies=_int(best.get("anomaly_count")),
        share=_float(best.get("anomaly_share")),
        best_model=_text(best.get("algorithm")),
        source_url=_text(results.get("source_url")),
        rerun_of=_text(results.get("rerun_of")),
        decision=_text(decision.get("decision")),
        decided_by=_text(decision.get("by")),
        decided_at=_text(decision.get("at")),
        comment=_text(decision.get("comment")) or None,
        report_exists=report_exists,
        report_name=report_name,
        problem="; ".join(problems) or None,
        sort_key=_timestamp(results.get("finished_at"), results.get("started_at")) or mtime,
    )


def _run_dirs(runs: Path) -> Iterable[Path]:
    try:
        entries = list(os.scandir(runs))
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False) and _SEGMENT.fullmatch(entry.name):
                out.append(Path(entry.path))
        except OSError:
            continue
    return out


def list_runs(
    reports_dir: str | os.PathLike[str], runs_dir: str | os.PathLike[str], *, limit: int = 500
) -> list[RunRecord]:
    """The runs in ``runs_dir`` (one directory each) with their decisions, newest first, at most ``limit``.

    Published reports in ``reports_dir`` whose run directory is gone are listed too (from the file alone).
    Never raises on bad content: a missing, half-written or corrupt ``results.json`` / ``decision.json``
    leaves the fields it would fill empty and says so in ``problem``.
    """
    reports = Path(reports_dir)
    records = {d.name: _record(d, reports) for d in _run_dirs(Path(runs_dir))}
    try:
        published = [p for p in reports.iterdir() if p.name.endswith(REPORT_SUFFIX)]
    except OSError:
        published = []
    for path in published:
        run_id = path.name[: -len(REPORT_SUFFIX)]
        if run_id in records or not _servable(reports, path.name):
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        records[run_id] = RunRecord(
            run_id=run_id,
            report_exists=True,
            report_name=path.name,
            problem="run directory not found",
            sort_key=mtime,
        )
    ordered = sorted(records.values(), key=lambda r: (r.sort_key, r.run_id), reverse=True)
    return ordered[: max(0, limit)]


def read_report(
    reports_dir: str | os.PathLike[str], requested: str, *, max_bytes: int = 256 * 1024 * 1024
) -> bytes:
    """The bytes of the report :func:`resolve_report` finds, opened without following a final symlink.

    Between the check and the read the file could be swapped for a symlink; ``O_NOFOLLOW`` refuses that,
    and the opened file must still be a regular file.
    """
    import stat

    path = resolve_report(reports_dir, requested)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ReportNotFound("no such report") from None
    except OSError:
        raise UnsafeReportPath("report file changed while it was opened") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeReportPath("report path is not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeReportPath("report file is too large to serve")
        return handle.read(max_bytes + 1)[:max_bytes]
