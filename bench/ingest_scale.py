"""Throughput and peak memory of bulk ingestion (API -> gzip snapshot + Parquet parts).

The demo API runs as its own process on a free loopback port; this process ingests every record
with :func:`anomaly_detection.ingest.bulk.ingest_to_parquet` and reports records/s, pages, wall
time and its own peak RSS. To tell whether the demo API (Python too) is the bottleneck, it also
measures how fast the API alone serves pages to ``--concurrency`` plain clients, and the CPU
seconds each process used during the ingestion.

    .venv/bin/python bench/ingest_scale.py --records 100000
    .venv/bin/python bench/ingest_scale.py                      # 1,000,000 records
    .venv/bin/python bench/ingest_scale.py --concurrency 8 --page-size 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from anomaly_detection.config import build_config  # noqa: E402
from anomaly_detection.ingest.bulk import ingest_to_parquet  # noqa: E402

PROBE_PAGES = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(records: int, features: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "include"), os.environ.get("PYTHONPATH")])),
    }
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.demo_api",
            "--port",
            str(port),
            "--rows",
            str(records),
            "--features",
            str(features),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            return api, base
        except OSError:
            if api.poll() is not None:
                raise RuntimeError(f"demo API exited: {api.stdout.read()}")
            time.sleep(0.2)
    api.kill()
    raise RuntimeError("demo API did not start within 300 s")


def probe_api(base: str, *, records: int, page_size: int, concurrency: int) -> float:
    """Records/s the API serves to ``concurrency`` clients that only download (no processing)."""
    pages = min(PROBE_PAGES, max(1, records // page_size))
    offsets = iter(range(0, pages * page_size, page_size))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    offset = next(offsets, None)
                if offset is None:
                    return
                session.get(
                    f"{base}/records", params={"offset": offset, "limit": page_size}, timeout=60
                ).raise_for_status()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return pages * page_size / (time.perf_counter() - started)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def parts_rows(parts_dir: Path) -> tuple[int, int]:
    """(rows, files) of the part files, from their footers only."""
    files = sorted(parts_dir.glob("part-*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files), len(files)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--features", type=int, default=12, help="metrics per record (default 12)")
    parser.add_argument(
        "--workdir", type=Path, help="keep the snapshot and parts here (default: a temporary directory)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the ingestion's progress log")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    print(
        f"{os.cpu_count()} CPU(s), load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} before the run",
        flush=True,
    )
    started = time.perf_counter()
    api, base = start_api(args.records, args.features)
    print(f"demo API with {args.records:,} records up in {time.perf_counter() - started:.1f}s", flush=True)
    try:
        api_alone = probe_api(
            base, records=args.records, page_size=args.page_size, concurrency=args.concurrency
        )
        config = build_config(
            {
                "source": {
                    "url": f"{base}/records",
                    "records_path": "data",
                    "concurrency": args.concurrency,
                    "pagination": {"type": "offset", "page_size": args.page_size, "max_pages": 1_000_000},
                }
            }
        )
        api_process, me = psutil.Process(api.pid), psutil.Process()
        api_cpu, my_cpu = cpu_seconds(api_process), cpu_seconds(me)
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            work = args.workdir or Path(tmp)
            result = ingest_to_parquet(config.source, config.processing, work / "raw", work / "parts")
            api_cpu, my_cpu = cpu_seconds(api_process) - api_cpu, cpu_seconds(me) - my_cpu
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            api_rss_mib = api_process.memory_info().rss / 2**20
            rows, files = parts_rows(result.parts_dir)
            raw_mib = sum(p.stat().st_size for p in (work / "raw").glob("page-*.gz")) / 2**20
            parts_mib = sum(p.stat().st_size for p in result.parts_dir.glob("part-*.parquet")) / 2**20
    finally:
        api.terminate()
        api.wait(timeout=30)

    if rows != args.records or result.records != args.records:
        raise SystemExit(f"expected {args.records} records, ingested {result.records}, parts hold {rows}")
    wall = result.seconds
    print(
        f"records            {result.records:,} ({len(result.columns)} columns, {files} part files, {parts_mib:.0f} MiB parquet)"
    )
    print(
        f"pages              {result.pages:,} of {args.page_size:,} records ({result.requests:,} requests, concurrency {args.concurrency})"
    )
    print(f"raw snapshot       {raw_mib:.0f} MiB gzip")
    print(f"wall time          {wall:.1f} s")
    print(f"records/s          {result.records / wall:,.0f}   (target > 20,000)")
    print(f"peak RSS           {peak_mib:,.0f} MiB   (target < 1,024; ingesting process, imports included)")
    print(
        f"demo API alone     {api_alone:,.0f} records/s to {args.concurrency} download-only clients ({api_rss_mib:,.0f} MiB RSS)"
    )
    print(
        f"CPU during ingest  ingester {my_cpu:.1f} s ({my_cpu / wall:.0%} of one core), demo API {api_cpu:.1f} s ({api_cpu / wall:.0%} of one core)"
    )
    print(
        f"CPU per record     ingester {my_cpu / result.records * 1e6:.0f} us, demo API {api_cpu / result.records * 1e6:.0f} us "
        f"(one core's worth of ingester CPU = {result.records / my_cpu:,.0f} records/s)"
    )
    if api_cpu / wall > 0.85:
        print(
            "bottleneck         the demo API: its single Python process (one GIL) was busy almost the whole time"
        )
    elif my_cpu / wall > 0.85:
        print(
            "bottleneck         the ingester's CPU (JSON parsing, flattening, gzip and Parquet encoding under one GIL)"
        )
    else:
        print("bottleneck         neither process saturated a core: the machine (other load) or I/O")
    print(f"load average       {' '.join(f'{x:.1f}' for x in os.getloadavg())} after the run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
