"""The demo API as its own process on a free loopback port, as `make demo` runs it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo_api(
    *, rows: int, seed: int, timeout: float = 60, drift_per_run: float = 0.0, page_delay: float = 0.0
) -> Iterator[str]:
    """Start ``python -m devtools.demo_api``; yield its base URL; stop it with SIGTERM.

    ``page_delay`` (seconds) holds every ``/records`` page back: a slow API, so that a test can catch
    the ingestion mid-way.
    """
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.demo_api",
            "--port",
            str(port),
            "--rows",
            str(rows),
            "--seed",
            str(seed),
            "--drift-per-run",
            str(drift_per_run),
            "--page-delay",
            str(page_delay),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"demo API did not start: {proc.stdout.read() if proc.poll() is not None else 'timeout'}"
                    )
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_cli(*args, cwd=ROOT, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "anomaly_detection", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_demo(demo_api, tmp_path, run_id, *overrides, runs_dir=None, timeout=600, rerun_of=None):
    """``run --config configs/demo.yaml`` against the demo API, outputs under ``tmp_path``; ``overrides``
    are ``KEY=VALUE`` strings for ``--set``."""
    sets = [f"source.url={demo_api}/records", *overrides]
    sets += [f"output.runs_dir={runs_dir or tmp_path / 'runs'}", f"output.reports_dir={tmp_path / 'reports'}"]
    args = ["run", "--config", "configs/demo.yaml", "--quiet", "--run-id", run_id]
    if rerun_of:
        args += ["--rerun-of", rerun_of]
    for item in sets:
        args += ["--set", item]
    return run_cli(*args, timeout=timeout)
