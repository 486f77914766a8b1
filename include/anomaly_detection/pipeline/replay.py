"""Re-run a saved run from its raw snapshot and resolved config, without the network.

``python -m anomaly_detection replay RUN_DIR`` builds a new run ``<run_id>.replay-<time>`` next to
the original. Its ingestion is the original's code path (native or bulk) reading the saved response
bodies instead of the API: every request the reader makes is answered from ``raw/`` by the page's
URL (secrets masked, as in the manifest), so pagination, flattening and typing happen exactly as
they did. Preprocessing, detection, selection and the report follow on the path the original run
took. Finally every output that carries a result is compared with the original's: the ingested
table, the features, each model's results and scored rows, the selection and ``anomalies.csv``.
"""

from __future__ import annotations

import gzip
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import requests
import yaml
from requests.adapters import BaseAdapter
from requests.utils import requote_uri

from anomaly_detection.config import PipelineConfig, SourceConfig, build_config, redact_url
from anomaly_detection.errors import PipelineError
from anomaly_detection.runs import RunPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedPage:
    page: int
    url: str
    status: int
    content_type: str
    file: Path

    def body(self) -> bytes:
        data = self.file.read_bytes()
        return gzip.decompress(data) if self.file.suffix == ".gz" else data


class Snapshot:
    """The pages of a run's ``raw/`` directory, found by their (masked) URL."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = Path(raw_dir)
        self.pages = self._manifest()
        self.by_url: dict[str, SavedPage] = {}
        self.by_number: dict[tuple[Path, int], SavedPage] = {}
        for page in self.pages:  # a URL fetched twice (a loop of next links): the first is the one read
            self.by_url.setdefault(_url_key(page.url), page)
            self.by_number.setdefault((page.file.parent, page.page), page)

    def _manifest(self) -> list[SavedPage]:
        """The pages of ``raw/``, or of each ``raw/source-N/`` of a run with several URLs."""
        sources = sorted(self.raw_dir.glob("source-*"), key=lambda p: (len(p.name), p.name))
        if sources and not any(
            (self.raw_dir / name).exists() for name in ("manifest.jsonl", "manifest.json")
        ):
            return [page for folder in sources for page in self._pages_in(folder)]
        return self._pages_in(self.raw_dir)

    def _pages_in(self, raw_dir: Path) -> list[SavedPage]:
        jsonl, json_ = raw_dir / "manifest.jsonl", raw_dir / "manifest.json"
        if jsonl.exists():
            entries = [orjson.loads(line) for line in jsonl.read_bytes().splitlines() if line.strip()]
        elif json_.exists():
            entries = orjson.loads(json_.read_bytes())
        else:
            raise PipelineError(f"replay: {raw_dir} has no manifest.json(l): not a raw snapshot")
        pages = []
        for entry in sorted(entries, key=lambda e: e["page"]):
            path = raw_dir / entry["file"]
            if not path.exists():
                raise PipelineError(
                    f"replay: page {entry['page']} ({entry['url']}) is listed but {path} is missing"
                )
            pages.append(
                SavedPage(
                    entry["page"], entry["url"], entry.get("status", 200), entry.get("content_type", ""), path
                )
            )
        return pages

    def next_after(self, page: SavedPage) -> SavedPage | None:
        return self.by_number.get((page.file.parent, page.page + 1))

    def session(self) -> requests.Session:
        """A session whose every request is answered from the snapshot."""
        session = requests.Session()
        adapter = SnapshotAdapter(self)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


class SnapshotAdapter(BaseAdapter):
    """A transport adapter that serves saved bodies; an unknown URL is a clear error, never a fetch."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = redact_url(request.url or "")
        page = self.snapshot.by_url.get(_url_key(url))
        if page is None:
            raise requests.exceptions.InvalidURL(f"replay: the snapshot has no response for {url}")
        response = requests.Response()
        response.status_code = page.status or 200
        response.headers["Content-Type"] = page.content_type
        following = self.snapshot.next_after(page)
        if following is not None:  # link_header pagination reads the next page's URL from here
            response.headers["Link"] = f'<{following.url}>; rel="next"'
        body = page.body()
        response.headers["Content-Length"] = str(len(body))
        response.raw = io.BytesIO(body)
        response.url = request.url or ""
        response.request = request
        response.reason = "OK (replayed)"
        return response

    def close(self) -> None:
        pass


def _url_key(url: str) -> str:
    """A URL as both the manifest (masked, unprepared) and a prepared request (masked) spell it."""
    return requote_uri(redact_url(url))


def _no_credentials(source: SourceConfig) -> tuple[dict[str, str], dict[str, str]]:
    return {}, {}


@dataclass
class Comparison:
    """What the replay reproduced: each check's name and whether it matched."""

    checks: dict[str, bool] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(self.checks.values())

    def check(self, name: str, same: bool, detail: str = "") -> None:
        self.checks[name] = same
        if not same:
            self.details.append(f"{name}: {detail}" if detail else name)


def _table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> tuple[bool, str]:
    if list(a.columns) != list(b.columns):
        return False, f"columns differ: {list(a.columns)[:5]}... vs {list(b.columns)[:5]}..."
    if len(a) != len(b):
        return False, f"{len(a)} rows vs {len(b)}"
    try:
        pd.testing.assert_frame_equal(
            a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True, check_dtype=True
        )
    except AssertionError as exc:
        return False, str(exc).splitlines()[0][:300]
    return True, ""


def _sorted_parts(path: Path) -> pd.DataFrame:
    """A Spark part-file directory in a stable order (part files may split rows differently)."""
    frame = _table(path)
    keys = [c for c in ("position", "_pos") if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True) if keys else frame


def compare(original: RunPaths, replayed: RunPaths) -> Comparison:
    """Compare every result-carrying output of two runs."""
    result = Comparison()
    for name in ("flattened.parquet", "features.parquet", "features.spark.parquet"):
        a, b = original.root / name, replayed.root / name
        if a.exists() or b.exists():
            if not (a.exists() and b.exists()):
                result.check(name, False, "present in only one run")
                continue
            result.check(name, *_frames_equal(_sorted_parts(a), _sorted_parts(b)))
    for name in ("kept_rows.npy", "duplicate_rows.npy", "labels.npy"):
        a, b = original.root / name, replayed.root / name
        if a.exists() or b.exists():
            result.check(name, a.exists() and b.exists() and np.array_equal(np.load(a), np.load(b)))
    model_files = sorted(
        {p.name for p in original.models.iterdir()} | {p.name for p in replayed.models.iterdir()}
    )
    for name in model_files:
        a, b = original.models / name, replayed.models / name
        if not (a.exists() and b.exists()):
            result.check(f"models/{name}", False, "present in only one run")
        elif name.endswith(".json"):
            result.check(f"models/{name}", _model_results(a) == _model_results(b), "model results differ")
        elif name.endswith(".parquet"):
            result.check(f"models/{name}", *_frames_equal(_sorted_parts(a), _sorted_parts(b)))
    first, second = orjson.loads(original.results.read_bytes()), orjson.loads(replayed.results.read_bytes())
    result.check(
        "selection",
        _timeless(first.get("best")) == _timeless(second.get("best")),
        f"{_best(first)} vs {_best(second)}",
    )
    same_models = _timeless(first.get("models")) == _timeless(second.get("models"))
    result.check("all model results", same_models, "a configuration's metric or count differs")
    result.check(
        "anomalies.csv", *_frames_equal(pd.read_csv(original.anomalies), pd.read_csv(replayed.anomalies))
    )
    return result


#: Fields that measure the run, not its result (also every ``*_seconds``).
TIMINGS = frozenset({"seconds"})


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _timeless(v) for k, v in value.items() if k not in TIMINGS and not str(k).endswith("_seconds")
        }
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _model_results(path: Path) -> Any:
    return _timeless(orjson.loads(path.read_bytes()))


def _best(results: dict[str, Any]) -> str:
    best = results.get("best") or {}
    return f"{best.get('algorithm')} {best.get('params')} ({best.get('anomaly_count')} anomalies)"


@dataclass
class ReplayOutcome:
    original: RunPaths
    replayed: RunPaths
    status: str
    comparison: Comparison | None = None
    error: str | None = None


def replay_config(original: RunPaths) -> PipelineConfig:
    """The original run's resolved config, on the path it took, writing next to it."""
    if not original.config.exists():
        raise PipelineError(f"replay: {original.config} is missing: not a run directory")
    data = yaml.safe_load(original.config.read_text(encoding="utf-8")) or {}
    results = orjson.loads(original.results.read_bytes()) if original.results.exists() else {}
    mode = results.get("mode")
    layers: dict[str, Any] = {
        "output": {"runs_dir": str(original.root.parent), "reports_dir": str(original.reports_dir)}
    }
    if mode in ("native", "spark") and data.get("processing", {}).get("mode") == "auto":
        layers["processing"] = {"mode": mode}  # the route taken, which in auto depends on the machine
    return build_config(data, layers)


def replay(run_dir: str | Path, *, run_id: str | None = None, echo: bool = False) -> ReplayOutcome:
    """Replay the run in ``run_dir`` and compare the outcome with the original."""
    from anomaly_detection.pipeline.run import run_pipeline

    root = Path(run_dir).resolve()
    if not (root / "raw").is_dir():
        raise PipelineError(f"replay: {root} has no raw/ snapshot")
    probe = RunPaths(root, root.parent)
    config = replay_config(probe)
    original = RunPaths(root, Path(config.output.reports_dir).resolve())
    snapshot = Snapshot(original.raw)
    run_id = run_id or f"{root.name}.replay-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    outcome = run_pipeline(
        config, run_id=run_id, echo=echo, credentials=_no_credentials, session_factory=snapshot.session
    )
    if outcome.status != "succeeded":
        return ReplayOutcome(original, outcome.paths, "failed", error=outcome.error)
    comparison = compare(original, outcome.paths)
    _link_snapshot(original, outcome.paths)
    return ReplayOutcome(
        original, outcome.paths, "identical" if comparison.identical else "different", comparison
    )


def _link_snapshot(original: RunPaths, replayed: RunPaths) -> None:
    """Note in the replay where its data came from (the replay's own raw/ holds the bodies it was served)."""
    note = {"replay_of": str(original.root), "raw_snapshot": str(original.raw)}
    (replayed.root / "replay_of.json").write_bytes(orjson.dumps(note, option=orjson.OPT_INDENT_2))
