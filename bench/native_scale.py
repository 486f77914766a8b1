"""Wall time and peak memory of the whole native pipeline (local demo API -> report), against a floor.

For each size, the demo API runs in its own process and the CLI (`python -m anomaly_detection run`)
in another; the figures are the CLI process's wall time (start to exit, imports included) and its
peak resident memory (from wait4's rusage). Simple mode, default config otherwise.

The floor is the least work the job needs, measured in the same run on the same input:
`bench/floor.py` in its own process parses the raw pages the CLI run saved, flattens them, fits
one Isolation Forest and one KMeans and scores every row. `ratio` is the CLI's wall time over the
floor's (targets: <= 4 at 100k and 1M rows; the CLI at 10k rows in <= 5 s).

    .venv/bin/python bench/native_scale.py                 # 10k, 100k, 1M rows
    .venv/bin/python bench/native_scale.py --rows 10000    # one size
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(rows: int, features: int, port: int) -> subprocess.Popen:
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.demo_api",
            "--port",
            str(port),
            "--rows",
            str(rows),
            "--features",
            str(features),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return api
        except OSError:
            if api.poll() is not None:
                raise RuntimeError(f"demo API exited: {api.stdout.read()}")
            time.sleep(0.2)
    api.kill()
    raise RuntimeError("demo API did not start within 120 s")


def run_cli(args: list[str]) -> tuple[float, float, int, str]:
    return _timed([sys.executable, "-m", "anomaly_detection", "run", *args])


def _timed(command: list[str]) -> tuple[float, float, int, str]:
    """Run ``command``: its wall seconds, peak RSS (MiB), exit code, and stdout (stderr's end on failure)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, code, out if code == 0 else err[-2000:]


def bench(rows: int, features: int, mode: str, workdir: Path) -> dict:
    port = free_port()
    api = start_api(rows, features, port)
    try:
        wall, rss_mib, code, text = run_cli(
            [
                "--config",
                str(ROOT / "configs" / "demo.yaml"),
                "--quiet",
                "--set",
                f"source.url=http://127.0.0.1:{port}/records",
                "--set",
                "source.pagination.page_size=10000",
                "--set",
                f"modeling.hyperparameters={mode}",
                "--set",
                f"output.runs_dir={workdir / 'runs'}",
                "--set",
                f"output.reports_dir={workdir / 'reports'}",
                "--run-id",
                f"bench-{rows}",
            ]
        )
    finally:
        api.terminate()
        api.wait(timeout=30)
    if code != 0:
        raise SystemExit(f"pipeline failed for {rows} rows: {text}")
    run_dir = workdir / "runs" / f"bench-{rows}"
    floor_wall, _, floor_code, floor_text = _timed(
        [sys.executable, str(ROOT / "bench" / "floor.py"), str(run_dir / "raw")]
    )
    if floor_code != 0:
        raise SystemExit(f"floor failed for {rows} rows: {floor_text}")
    floor = json.loads(floor_text.strip().splitlines()[-1])
    if floor["rows"] != rows:
        raise SystemExit(f"the floor read {floor['rows']} rows, the run {rows}")
    results = json.loads((run_dir / "results.json").read_text())
    log_text = (run_dir / "pipeline.log").read_text()
    finished = re.findall(r"finished in ([0-9.]+)s", log_text)
    rendered = re.findall(r"report written to \S+ \(([0-9.]+) kB, ([0-9.]+) s\)", log_text)
    return {
        "rows": rows,
        "features": len(results["features"]),
        "wall_s": round(wall, 2),
        "floor_s": round(floor_wall, 2),
        "ratio": round(wall / floor_wall, 2),
        "pipeline_s": float(finished[-1]) if finished else float("nan"),
        "peak_rss_mib": round(rss_mib, 1),
        "configs": len(results["models"]),
        "best": f"{results['best']['algorithm']} {results['best']['params']}",
        "anomalies": results["best"]["anomaly_count"],
        "report_mb": round(float(rendered[-1][0]) / 1024, 2) if rendered else float("nan"),
        "render_s": float(rendered[-1][1]) if rendered else float("nan"),
        "select_report_s": _stage_seconds(log_text),
        "estimates_mib": _memory_estimates(log_text),
    }


def _memory_estimates(log_text: str) -> str:
    """The memory guard's peak estimates (while ingesting; before preprocessing) from the log, MiB."""
    found = re.findall(r"native path: about ([0-9.]+) (MiB|GiB) needed", log_text)
    return " / ".join(str(round(float(v) * (1024 if unit == "GiB" else 1))) for v, unit in found) or "-"


def _stage_seconds(log_text: str) -> float:
    """Seconds from the best-model line (select) to the report being written, from the log's timestamps."""
    from datetime import datetime

    stamps = {}
    for line in log_text.splitlines():
        if "best model:" in line and "select" not in stamps:
            stamps["select"] = line[:23]
        if "report written to" in line:
            stamps["report"] = line[:23]
    if len(stamps) < 2:
        return float("nan")
    fmt = "%Y-%m-%d %H:%M:%S,%f"
    return round(
        (datetime.strptime(stamps["report"], fmt) - datetime.strptime(stamps["select"], fmt)).total_seconds(),
        1,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, action="append", help="row count (repeatable); default 10k, 100k, 1M"
    )
    parser.add_argument("--features", type=int, default=12, help="numeric metrics per record (default 12)")
    parser.add_argument("--mode", choices=["simple", "complex"], default="simple")
    args = parser.parse_args()
    sizes = args.rows or [10_000, 100_000, 1_000_000]
    print(
        "wall s: the CLI process from start to exit; pipeline s: the same run without interpreter start-up and imports"
    )
    print(
        "report MB: size of report.html; report s: from the best-model line to the report written (explanations, time view, history, figures)"
    )
    print(
        "guard MiB: the memory guard's peak estimates while ingesting / before preprocessing (memory.py), beside the measured peak"
    )
    print(
        "floor s: bench/floor.py on the same raw pages (parse, flatten, one Isolation Forest, one KMeans); ratio = wall / floor"
    )
    print(
        f"{'rows':>9} {'features':>8} {'wall s':>8} {'floor s':>8} {'ratio':>6} {'pipeline s':>10} {'peak RSS MiB':>13} {'guard MiB':>12} {'configs':>7} {'anomalies':>9} {'report MB':>9} {'report s':>8}  best"
    )
    with tempfile.TemporaryDirectory(prefix="bench-native-") as tmp:
        for rows in sizes:
            r = bench(rows, args.features, args.mode, Path(tmp))
            print(
                f"{r['rows']:>9} {r['features']:>8} {r['wall_s']:>8} {r['floor_s']:>8} {r['ratio']:>6} {r['pipeline_s']:>10} {r['peak_rss_mib']:>13} {r['estimates_mib']:>12} {r['configs']:>7}"
                f" {r['anomalies']:>9} {r['report_mb']:>9} {r['select_report_s']:>8}  {r['best']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
