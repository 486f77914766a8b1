"""Hostile response bodies: oversized and endless, gzip bombs, invalid UTF-8, absurd nesting,
a million keys, a 50 MB string.

Each one ends in a clear error naming the URL (and the limit), or is read correctly; never a
crash, a ``RecursionError`` or unbounded memory. Memory is measured in a child process (its peak
resident set from ``/proc``) while the API runs in this one; nothing here asserts on time.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pandas as pd
import pytest
from flaky_api import Conn, FlakyApi, static

import anomaly_detection
from anomaly_detection.config import build_config
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.bulk import ingest_to_parquet
from anomaly_detection.ingest.http import READ_CHUNK_BYTES
from anomaly_detection.ingest.native import ingest

READERS = ("native", "bulk")
MIB = 2**20
INCLUDE = str(Path(anomaly_detection.__file__).resolve().parents[1])


def configure(url: str, *, limits: dict | None = None, max_columns: int | None = None, **source):
    cfg = build_config({"source": {"url": url, "retries": 1, "backoff_seconds": 0.01, **source}})
    # set like this until the keys are in the config model (getattr in the readers finds them)
    processing = (
        cfg.processing.model_copy(update={"max_columns": max_columns}) if max_columns else cfg.processing
    )
    return cfg.source.model_copy(update=limits or {}), processing


def read(reader: str, tmp_path: Path, source, processing) -> pd.DataFrame:
    """The flattened records (raises what the reader raises)."""
    if reader == "native":
        return ingest(source, processing, tmp_path / "raw", sleep=lambda s: None).frame
    ingest_to_parquet(
        source, processing, tmp_path / "raw", tmp_path / "parts", sleep=lambda s: None, batch_records=1
    )
    return pd.read_parquet(tmp_path / "parts")


def raw_body(tmp_path: Path, reader: str, name: str = "page-1") -> bytes:
    number = name.rpartition("-")[2]
    stem = f"page-{int(number):05d}" if reader == "native" else f"page-{int(number):06d}"
    (path,) = [
        p for p in (tmp_path / "raw").iterdir() if p.name.startswith(stem + ".") and ".attempt" not in p.name
    ]
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


@pytest.fixture
def api():
    with FlakyApi([]) as server:
        yield server


def child_run(reader: str, url: str, raw: Path, limits: dict) -> dict:
    """Ingest in a child process; return its outcome and how much its peak resident set grew."""
    script = textwrap.dedent(
        """
        import json, pathlib, re, resource, sys
        from anomaly_detection.ingest.bulk import ingest_to_parquet
        from anomaly_detection.config import build_config
        from anomaly_detection.errors import IngestionError
        from anomaly_detection.ingest.native import ingest

        reader, url, raw, limits = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), json.loads(sys.argv[4])

        def status(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

        cfg = build_config({"source": {"url": url, "retries": 0}})
        source = cfg.source.model_copy(update=limits)
        try:  # "5": reset the peak resident set to the current one
            open("/proc/self/clear_refs", "w").write("5")
            reset = True
        except OSError:
            reset = False
        before = status("VmRSS")
        outcome = {}
        try:
            if reader == "native":
                frame = ingest(source, cfg.processing, raw, sleep=lambda s: None).frame
                outcome["rows"] = len(frame)
            else:
                outcome["rows"] = ingest_to_parquet(source, cfg.processing, raw, raw.parent / "parts", sleep=lambda s: None).records
        except IngestionError as exc:
            outcome["error"] = str(exc)
        peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcome["growth_mib"] = (peak - before) / 1024
        print(json.dumps(outcome))
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script, reader, url, str(raw), json.dumps(limits)],
        env={**os.environ, "PYTHONPATH": INCLUDE},
        capture_output=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    return json.loads(child.stdout.decode().strip().splitlines()[-1])


# --------------------------------------------------------------------------- size


def endless(conn: Conn, query: dict[str, str]) -> None:
    """A 200 with no length that never ends (until the client hangs up)."""
    conn.head(200, {"Content-Type": "application/json"})
    conn.write(b'[{"id": 1, "blob": "')
    chunk = b"x" * 65536
    while conn.write(chunk) and conn.pause(0):
        pass


@pytest.mark.parametrize("reader", READERS)
def test_an_endless_body_stops_at_the_cap_in_bounded_memory(reader, api, tmp_path, fault_ledger):
    fault_ledger.injected("endless response body")
    api.route("/endless", endless)
    cap = 4 * MIB
    outcome = child_run(reader, api.base_url + "/endless", tmp_path / "raw", {"max_response_bytes": cap})
    message = outcome.get("error", "")
    assert api.base_url + "/endless" in message and f"source.max_response_bytes={cap}" in message, outcome
    assert outcome["growth_mib"] < 32, (
        outcome
    )  # the cap is 4 MiB; the stream is endless (about 5 MiB measured)
    partial = raw_body(tmp_path, reader, "page-1")
    assert cap < len(partial) <= cap + READ_CHUNK_BYTES and partial.startswith(b'[{"id": 1, "blob": "xxx')
    assert ".partial" in message  # what arrived is kept, and the message says where
    entry = read_manifest(tmp_path / "raw")[0]
    assert entry["file"].startswith("page-") and ".partial" in entry["file"] and not entry["records"]


def read_manifest(raw: Path) -> list[dict]:
    if (raw / "manifest.jsonl").exists():
        return [json.loads(line) for line in (raw / "manifest.jsonl").read_text().splitlines()]
    return json.loads((raw / "manifest.json").read_text())


@pytest.mark.parametrize("reader", READERS)
def test_a_content_length_over_the_cap_is_refused_before_reading(reader, api, tmp_path, fault_ledger):
    fault_ledger.injected("Content-Length of 1 GiB")
    api.route(
        "/huge",
        lambda conn, query: (
            conn.head(200, {"Content-Type": "application/json", "Content-Length": str(2**30)}),
            conn.write(b"["),
        ),
    )
    source, processing = configure(api.base_url + "/huge", limits={"max_response_bytes": MIB})
    with pytest.raises(IngestionError) as info:
        read(reader, tmp_path, source, processing)
    message = str(info.value)
    assert (
        api.base_url + "/huge" in message
        and f"max_response_bytes={MIB}" in message
        and f"Content-Length is {2**30}" in message
    )
    assert api.hits["/huge"] == 1  # not retried: it would be as large again
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith("page-")]  # nothing was read


@pytest.mark.parametrize("reader", READERS)
def test_a_gzip_bomb_is_capped_on_its_decoded_size(reader, api, tmp_path, fault_ledger):
    fault_ledger.injected("gzip bomb (64 MiB of zeros in a small body)")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(packer.compress(bytes(MIB)) for _ in range(64)) + packer.flush()
    assert len(bomb) < MIB
    api.route("/bomb", static(bomb, {"Content-Encoding": "gzip"}))
    source, processing = configure(api.base_url + "/bomb", limits={"max_response_bytes": MIB})
    with pytest.raises(
        IngestionError, match=rf"larger than source.max_response_bytes={MIB} \(more than {MIB} bytes arrived"
    ):
        read(reader, tmp_path, source, processing)
    assert api.hits["/bomb"] == 1
    assert MIB < len(raw_body(tmp_path, reader)) <= MIB + READ_CHUNK_BYTES


def test_a_body_under_the_cap_is_read(api, tmp_path):
    body = json.dumps([{"id": i, "text": "t" * 1000} for i in range(100)]).encode()
    api.route("/ok", static(body))
    source, processing = configure(api.base_url + "/ok", limits={"max_response_bytes": len(body)})
    assert len(read("native", tmp_path, source, processing)) == 100


@pytest.mark.parametrize("reader", READERS)
def test_a_50_mb_string_is_read_in_proportionate_memory(reader, api, tmp_path, fault_ledger):
    size = 50 * MIB
    body = b'[{"id": 1, "blob": "' + b"y" * size + b'"}, {"id": 2, "blob": "z"}]'
    api.route("/long", static(body))
    outcome = child_run(reader, api.base_url + "/long", tmp_path / "raw", {})
    assert outcome.get("rows") == 2, outcome
    assert outcome["growth_mib"] < 10 * size / MIB, outcome  # a few copies of the value (about 7 measured)
    assert raw_body(tmp_path, reader) == body
    if reader == "bulk":
        blobs = pd.read_parquet(tmp_path / "parts")["blob"]
        assert blobs.str.len().tolist() == [size, 1]


# --------------------------------------------------------------------------- encoding and structure


@pytest.mark.parametrize("reader", READERS)
def test_invalid_utf8_is_replaced_with_a_warning_naming_the_url_and_offset(
    reader, api, tmp_path, caplog, fault_ledger
):
    fault_ledger.injected("invalid UTF-8 in a text field")
    body = b'[{"id": 1, "name": "ab\xff\xfecd"}, {"id": 2, "name": "ok"}]'
    api.route("/latin", static(body))
    source, processing = configure(api.base_url + "/latin")
    with caplog.at_level(logging.WARNING, logger="anomaly_detection"):
        frame = read(reader, tmp_path, source, processing)
    assert frame["name"].tolist() == ["ab\ufffd\ufffdcd", "ok"]
    warning = " ".join(r.getMessage() for r in caplog.records if "not valid utf-8" in r.getMessage())
    assert api.base_url + "/latin" in warning and "at byte 22" in warning
    assert raw_body(tmp_path, reader) == body  # the snapshot keeps the bytes as sent
    assert api.hits["/latin"] == 1
    fault_ledger.recovered(f"{reader} ingest read a mis-encoded page")


@pytest.mark.parametrize("reader", READERS)
def test_100000_levels_of_nesting_is_a_clear_error(reader, api, tmp_path, fault_ledger):
    fault_ledger.injected("100,000 levels of nested arrays")
    api.route("/deep", static(b"[" * 100_000 + b"]" * 100_000))
    source, processing = configure(api.base_url + "/deep")
    with pytest.raises(IngestionError) as info:
        read(reader, tmp_path, source, processing)
    message = str(info.value)
    assert api.base_url + "/deep" in message and "nested too deeply" in message and "page-" in message
    assert api.hits["/deep"] == 1  # a property of the data: not retried
    assert len(raw_body(tmp_path, reader)) == 200_000


def test_deep_nesting_never_overflows_a_small_thread_stack(tmp_path):
    """The fallback parser runs on its own large stack, whatever the caller's (a crash would kill the child)."""
    script = textwrap.dedent(
        """
        import json, threading
        from anomaly_detection.ingest.parse import BodyNotJson, parse_json

        out = {}

        def run():
            value = parse_json(b"[" * 19_000 + b"]" * 19_000, source="x")
            depth = 0
            while value:
                value, depth = value[0], depth + 1
            out["depth"] = depth
            try:
                parse_json(b"[" * 100_000 + b"]" * 100_000, source="http://x/deep")
            except BodyNotJson as exc:
                out["error"], out["deep"] = str(exc), exc.deep

        threading.stack_size(256 * 1024)
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        print(json.dumps(out))
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": INCLUDE},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 0, (child.returncode, child.stderr.decode()[-2000:])
    out = json.loads(child.stdout)
    assert out["depth"] == 18_999 and out["deep"] and "http://x/deep is nested too deeply" in out["error"]


@pytest.mark.parametrize("reader", READERS)
def test_a_record_with_a_million_keys_is_refused_by_the_column_cap(reader, api, tmp_path, fault_ledger):
    fault_ledger.injected("a record with 10^6 keys")
    body = b"[{" + b",".join(b'"k%d":%d' % (i, i) for i in range(1_000_000)) + b"}]"
    api.route("/wide", static(body))
    source, processing = configure(api.base_url + "/wide")
    with pytest.raises(IngestionError) as info:
        read(reader, tmp_path, source, processing)
    message = str(info.value)
    assert (
        api.base_url + "/wide" in message
        and "processing.max_columns=5000" in message
        and "1000000" in message
    )
    assert api.hits["/wide"] == 1
    assert raw_body(tmp_path, reader) == body


@pytest.mark.parametrize("reader", READERS)
def test_the_column_cap_counts_the_columns_of_all_pages(reader, api, tmp_path):
    def handler(conn: Conn, query: dict[str, str]) -> None:
        offset = int(query["offset"])
        keys = "abcd" if offset == 0 else "efgh" if offset == 10 else ""
        records = [{"id": offset + i, **{k: i for k in keys}} for i in range(10 if keys else 0)]
        static(json.dumps(records).encode())(conn, query)

    api.route("/pages", handler)
    source, processing = configure(
        api.base_url + "/pages", max_columns=8, pagination={"type": "offset", "page_size": 10}
    )
    with pytest.raises(IngestionError) as info:
        read(reader, tmp_path, source, processing)
    message = str(info.value)
    assert "processing.max_columns=8" in message and "9 distinct columns" in message
    assert f"{api.base_url}/pages?offset=10&limit=10" in message and "page 2" in message


@pytest.mark.parametrize("reader", READERS)
def test_chunked_and_gzip_encoded_bodies_are_read_whole(reader, api, tmp_path):
    records = [{"id": i, "text": f"row {i} " * 50} for i in range(300)]
    body = json.dumps(records).encode()

    def chunked(conn: Conn, query: dict[str, str]) -> None:
        conn.head(
            200,
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked", "Content-Encoding": "gzip"},
        )
        packed = gzip.compress(body)
        for start in range(0, len(packed), 1000):
            piece = packed[start : start + 1000]
            conn.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.write(b"0\r\n\r\n")

    api.route("/chunked", chunked)
    source, processing = configure(api.base_url + "/chunked")
    frame = read(reader, tmp_path, source, processing)
    assert frame["id"].tolist() == list(range(300)) and frame["text"].tolist() == [r["text"] for r in records]
    assert raw_body(tmp_path, reader) == body  # the snapshot holds the decoded body
