"""The native path's memory guard: estimates before loading, a clear stop in native mode, Spark in auto."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from demo_process import running_demo_api

from anomaly_detection.config import ProcessingConfig
from anomaly_detection.ingest import memory

ROOT = Path(__file__).resolve().parents[2]


def test_the_guard_counts_pages_and_stops_past_the_budget():
    processing = ProcessingConfig(native_memory_budget_mb=400)
    guard = memory.IngestMemoryGuard(processing)
    page = pd.DataFrame(
        {"a": np.arange(10_000, dtype=float), "b": np.ones(10_000), "name": ["x" * 20] * 10_000}
    )
    guard(page)
    assert guard.rows == 10_000 and guard.estimate().numeric_columns == 2 and guard.estimate().columns == 3
    with pytest.raises(memory.MemoryBudgetExceeded, match=r"processing.mode: spark") as caught:
        for _ in range(200):
            guard(page)
    assert caught.value.estimate.peak_bytes > 400 * memory.MIB
    assert "ingestion stopped after" in str(caught.value)


def test_parquet_estimates_come_from_metadata(tmp_path):
    frame = pd.DataFrame(
        {"a": np.arange(50_000, dtype=float), "b": np.arange(50_000), "t": ["text"] * 50_000}
    )
    frame.to_parquet(tmp_path / "one.parquet")
    parts = tmp_path / "parts"
    parts.mkdir()
    frame.iloc[:20_000].to_parquet(parts / "part-0.parquet")
    frame.iloc[20_000:].to_parquet(parts / "part-1.parquet")
    single, split = memory.estimate_parquet(tmp_path / "one.parquet"), memory.estimate_parquet(parts)
    assert single.rows == split.rows == 50_000 and single.numeric_columns == 2 and single.columns == 3
    assert single.frame_bytes >= 50_000 * 16  # two 8-byte numbers per row at least
    assert memory.check_parquet(parts, ProcessingConfig(native_memory_budget_mb=10_000)) == split
    with pytest.raises(memory.MemoryBudgetExceeded, match="not loading"):
        memory.check_parquet(parts, ProcessingConfig(native_memory_budget_mb=1))


def test_the_default_budget_is_half_the_machine():
    assert memory.budget_bytes(ProcessingConfig()) == memory.physical_memory_bytes() // 2


def _run(base, tmp_path, run_id, *sets):
    args = [
        sys.executable, "-m", "anomaly_detection", "run", "-q", "-c", "configs/demo.yaml", "--run-id", run_id,
        "--set", f"source.url={base}/records", "--set", f"output.runs_dir={tmp_path / 'runs'}",
        "--set", f"output.reports_dir={tmp_path / 'reports'}", "--set", "processing.native_memory_budget_mb=1",
    ]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900, env=dict(os.environ))


def test_native_mode_stops_with_advice_and_keeps_what_it_fetched(tmp_path):
    with running_demo_api(rows=1500, seed=2) as base:
        out = _run(base, tmp_path, "too-big", "processing.mode=native")
    assert out.returncode == 1
    assert "budget" in out.stderr and "processing.mode: spark" in out.stderr
    run_dir = tmp_path / "runs" / "too-big"
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    assert list((run_dir / "raw").glob("page-*")), "the pages fetched before the stop are kept"
    assert "processing.mode: spark" in (run_dir / "pipeline.log").read_text()


# auto mode routing a run over budget to Spark: tests/integration/test_cli.py (one spark-submit pipeline)
