"""Faults: a flapping API (resets, 5xx, 429, stalls, trickling and cut-off bodies, changing pages).

Both readers (native :func:`~anomaly_detection.ingest.native.ingest` and bulk
:func:`~anomaly_detection.ingest.bulk.ingest_to_parquet`) must end in one of two ways:

* a complete, correct snapshot: every record of the dataset exactly once, and the flattened
  output equal to the records of the raw page files the manifest lists, or
* an :class:`~anomaly_detection.errors.IngestionError` that names the URL and the cause, with
  every page already fetched still on disk and in the manifest.

Data lost counts the bodies the server sent whole that are in no raw file, and the manifest
entries whose file is missing or unreadable.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flaky_api import FlakyApi, dataset

import anomaly_detection
from anomaly_detection.config import build_config
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.bulk import ingest_to_parquet
from anomaly_detection.ingest.native import ingest

READERS = ("native", "bulk")
TIMEOUT = 0.5
COLUMNS = ["id", "name", "value", "rev", "nested.a", "nested.b.c"]


class Sleeps(list):
    """A fake ``sleep`` that records the delays asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@dataclass
class Run:
    reader: str
    raw: Path
    parts: Path
    output: pd.DataFrame | None
    error: IngestionError | None
    sleeps: Sleeps


def configure(url: str, pagination: str = "offset", **source: Any):
    """Config for the flaky API: fast backoff, a short timeout and a 1 s body deadline."""
    cfg = build_config(
        {
            "source": {
                "url": url,
                "records_path": "items",
                "timeout_seconds": TIMEOUT,
                "backoff_seconds": 0.01,
                "pagination": {"type": pagination, "page_size": 10},
                **source,
            }
        }
    )
    # set like this until the keys are in the config model (getattr in the readers finds them)
    return cfg.source.model_copy(update={"max_response_seconds": 1.0}), cfg.processing


def read(reader: str, tmp_path: Path, source, processing) -> Run:
    raw, parts, sleeps = tmp_path / "raw", tmp_path / "parts", Sleeps()
    output, error = None, None
    try:
        if reader == "native":
            output = ingest(source, processing, raw, sleep=sleeps).frame
        else:
            ingest_to_parquet(source, processing, raw, parts, sleep=sleeps, batch_records=25)
            output = pd.read_parquet(parts)
    except IngestionError as exc:
        error = exc
    return Run(reader, raw, parts, output, error, sleeps)


def body_of(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def manifest(raw: Path) -> list[dict]:
    if (raw / "manifest.jsonl").exists():
        return [json.loads(line) for line in (raw / "manifest.jsonl").read_text().splitlines()]
    return json.loads((raw / "manifest.json").read_text())


def snapshot_records(raw: Path) -> dict[int, list[dict]]:
    """The records of every page the manifest says was read, by page, from the raw files."""
    pages: dict[int, list[dict]] = {}
    for entry in manifest(raw):
        if entry["records"]:
            items = json.loads(body_of(raw / entry["file"]))["items"]
            assert len(items) == entry["records"], entry
            pages[entry["page"]] = items
    return pages


def flat(record: dict) -> dict:
    return {
        "id": record["id"],
        "name": record["name"],
        "value": record["value"],
        "rev": record["rev"],
        "nested.a": record["nested"]["a"],
        "nested.b.c": record["nested"]["b"]["c"],
    }


def data_lost(api: FlakyApi, raw: Path) -> int:
    """Bodies sent whole but in no raw file, plus manifest entries whose file is missing or unreadable."""
    on_disk = {body_of(path) for path in raw.glob("page-*")}
    missing = sum(1 for bodies in api.served.values() for body in bodies if body not in on_disk)
    for entry in manifest(raw):
        for name in [entry["file"], *entry.get("set_aside", [])]:
            if not (raw / name).is_file():
                missing += 1
    return missing


def assert_output_matches_snapshot(run: Run, api: FlakyApi) -> dict[int, list[dict]]:
    pages = snapshot_records(run.raw)
    expected = pd.DataFrame([flat(r) for items in pages.values() for r in items]).sort_values(
        "id", ignore_index=True
    )
    got = run.output[COLUMNS].sort_values("id", ignore_index=True)
    assert got["id"].tolist() == [r["id"] for r in api.records], "every record exactly once"
    assert sorted(id for items in pages.values() for id in (r["id"] for r in items)) == [
        r["id"] for r in api.records
    ]
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    return pages


def record_ledger(fault_ledger, api: FlakyApi, run: Run) -> int:
    for fault, count in api.injected.items():
        fault_ledger.injected(f"flapping API: {fault}", count)
    lost = data_lost(api, run.raw)
    fault_ledger.lost(lost)
    return lost


# --------------------------------------------------------------------------- recovery


#: Up to three faults per page (four attempts with retries=3), each kind at least once.
RECOVERABLE = {
    1: ["reset", "500"],
    2: ["429", "truncated"],
    3: ["short", "reset_body"],
    4: ["stall"],
    5: ["trickle"],
    6: ["truncated", "changed"],
    7: ["drip"],
    8: ["500", "truncated", "changed"],
}


@pytest.mark.parametrize("pagination", ["offset", "next_url"])
@pytest.mark.parametrize("reader", READERS)
def test_every_fault_once_then_a_complete_snapshot(reader, pagination, tmp_path, fault_ledger):
    with FlakyApi(dataset(85), page_size=10, script=RECOVERABLE) as api:
        source, processing = configure(api.url, pagination, retries=3)
        run = read(reader, tmp_path, source, processing)
    lost = record_ledger(fault_ledger, api, run)
    assert run.error is None, run.error
    assert sum(api.injected.values()) == sum(map(len, RECOVERABLE.values()))
    pages = assert_output_matches_snapshot(run, api)
    # a page that changed between retries: records and snapshot both come from the body that parsed
    assert {r["rev"] for r in pages[6]} == {1} and {r["rev"] for r in pages[8]} == {1}
    changed = run.output[run.output["id"].between(50, 59)]
    assert set(changed["rev"]) == {1} and changed["value"].tolist() == [
        r["value"] + 1 for r in api.records[50:60]
    ]
    assert 1.0 in run.sleeps  # Retry-After: 1
    entries = {e["page"]: e for e in manifest(run.raw) if e["records"]}
    suffix = ".json.gz" if reader == "bulk" else ".json"
    digits = 6 if reader == "bulk" else 5
    assert entries[2]["set_aside"] == [f"page-{2:0{digits}d}.attempt2{suffix}"]
    assert entries[8]["set_aside"] == [f"page-{8:0{digits}d}.attempt2{suffix}"]
    assert entries[1]["attempts"] == 3 and entries[8]["attempts"] == 3 and entries[9]["attempts"] == 1
    attempt = body_of(run.raw / entries[6]["set_aside"][0]).decode()
    assert (
        attempt.startswith('{"items": [{"id": 50') and '"rev": 0' in attempt
    )  # the cut-off first body, kept
    assert lost == 0
    fault_ledger.recovered(
        f"{reader} ingest ({pagination}) read every page through {sum(api.injected.values())} faults"
    )


# --------------------------------------------------------------------------- faults that outlast the retries

PERSISTENT = {
    "reset": "connection reset by the server",
    "reset_body": "connection broke before the whole body arrived",
    "500": "HTTP 500",
    "429": "HTTP 429",
    "stall": f"timed out (nothing received within {TIMEOUT:g}s)",
    "trickle": "timed out",
    "drip": "still arriving after source.max_response_seconds=1s",
    "truncated": "is not valid JSON",
    "short": "IncompleteRead",
}


@pytest.mark.parametrize("fault", sorted(PERSISTENT))
@pytest.mark.parametrize("reader", READERS)
def test_a_fault_that_outlasts_the_retries_is_a_clear_error_and_keeps_the_pages(
    reader, fault, tmp_path, fault_ledger
):
    with FlakyApi(dataset(85), page_size=10, script={3: [fault] * 2}) as api:
        source, processing = configure(api.url, retries=1)
        run = read(reader, tmp_path, source, processing)
    lost = record_ledger(fault_ledger, api, run)
    assert run.error is not None, f"{fault}: expected an IngestionError"
    message = str(run.error)
    assert api.page_url(3) in message and PERSISTENT[fault] in message, message
    if reader == "bulk":
        assert message.startswith("page 3:"), message
    assert api.requests[3] == 2 and api.injected[fault] == 2
    pages = snapshot_records(run.raw)
    assert [r["id"] for r in pages[1] + pages[2]] == list(range(20))  # every page before the failure, on disk
    assert all(items == api.records[(page - 1) * 10 : page * 10] for page, items in pages.items())
    entries = {e["page"]: e for e in manifest(run.raw)}
    if fault == "truncated":
        final = run.raw / entries[3]["file"]
        (attempt,) = entries[3]["set_aside"]
        assert "after 2 attempt(s)" in message and str(final) in message and "line 1 column" in message
        assert ".attempt1." in attempt and body_of(run.raw / attempt) == body_of(final)
        assert not entries[3]["records"]
    if fault in ("500", "429"):
        assert json.loads(body_of(run.raw / entries[3]["file"])) == {"error": f"injected {fault}"}
    assert lost == 0


# --------------------------------------------------------------------------- a process killed mid-write

KILLER = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    from anomaly_detection.config import build_config
    reader, victim, url, raw = sys.argv[1:5]
    write_bytes = pathlib.Path.write_bytes
    seen = []

    def dying_write(self, data):
        seen.append(self.name)
        hit = victim in self.name and (victim != "manifest" or len([n for n in seen if "manifest" in n]) == 3)
        if hit:
            with open(self, "wb") as handle:
                handle.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return write_bytes(self, data)

    pathlib.Path.write_bytes = dying_write
    cfg = build_config({"source": {"url": url, "records_path": "items", "pagination": {"type": "offset", "page_size": 10}, "concurrency": 1}})
    if reader == "native":
        from anomaly_detection.ingest.native import ingest
        ingest(cfg.source, cfg.processing, pathlib.Path(raw))
    else:
        from anomaly_detection.ingest.bulk import ingest_to_parquet
        ingest_to_parquet(cfg.source, cfg.processing, pathlib.Path(raw), pathlib.Path(raw).parent / "parts", batch_records=1)
    """
)


@pytest.mark.parametrize(
    "reader, victim", [("native", "page-00003"), ("native", "manifest"), ("bulk", "page-000003")]
)
def test_a_process_killed_mid_write_leaves_no_half_file_under_a_final_name(
    reader, victim, tmp_path, fault_ledger
):
    fault_ledger.injected(f"SIGKILL while writing {victim.rstrip('0123456789-')}")
    include = str(Path(anomaly_detection.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": include}
    raw = tmp_path / "raw"
    with FlakyApi(dataset(85), page_size=10) as api:
        child = subprocess.run(
            [sys.executable, "-c", KILLER, reader, victim, api.url, str(raw)],
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    finals = sorted(p.name for p in raw.iterdir() if not p.name.startswith("."))
    for name in finals:
        if name.startswith("page-"):
            items = json.loads(body_of(raw / name))["items"]  # every file under a final name is whole
            assert not items or items == api.records[items[0]["id"] : items[0]["id"] + 10]
    entries = manifest(raw)  # and the manifest parses (bulk: whole lines only)
    lost = sum(1 for e in entries if e["file"] not in finals)
    fault_ledger.lost(lost)
    assert lost == 0
    assert (
        "page-00001.json" in finals or "page-000001.json.gz" in finals
    )  # bulk: one fetch thread, pages saved in order
    if victim == "manifest":  # the kill hit the third manifest write: the second one stands
        assert [(e["page"], e["records"]) for e in entries] == [(1, 10)]
    else:  # the half-written page never got its final name
        assert not any(victim in name for name in finals)
