"""Wall time, driver peak RSS and rows/s of the Spark path, with the native path beside it.

For each size, a table of N rows x 10 numeric columns (five Gaussian clusters, 0.5% planted far
points) is written as Parquet part files, as bulk ingestion leaves them in ``flattened.parquet/``.
The timed part is what follows ingestion: Spark preprocess and detect (spark-submit, ``local[2]``,
the default ``spark`` settings: driver memory 3g) and the common select and report stages, in
simple mode over the three Spark algorithms (Isolation Forest, KMeans, Bisecting KMeans). The
native path then runs the same stages on the same table in one Python process, where it finishes
within ``--native-timeout``.

Memory is sampled every 0.2 s over the whole process tree:

* ``driver``: the Spark driver, i.e. the ``SparkSubmit`` JVM (in local mode it also runs the
  executors' tasks; a copy it forks for a moment to start a Python worker is not counted twice)
  plus the Python driver of the job;
* ``workers``: PySpark's Python workers (``mapInPandas`` scoring), reported apart;
* ``stages``: the Python process that runs select and report (and submits the jobs).

    .venv/bin/python bench/spark_scale.py                        # 1M, 3M, 10M rows
    .venv/bin/python bench/spark_scale.py --rows 1000000 --no-native
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

COLUMNS = 10
PART_ROWS = 1_000_000
ALGORITHMS = ["isolation_forest", "kmeans", "bisecting_kmeans"]
GiB = 1024**3


def write_table(target: Path, rows: int, seed: int = 0) -> None:
    """``rows`` x ``COLUMNS`` doubles and a timestamp, in part files of ``PART_ROWS`` rows; 0.5% planted far points."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 100, (5, COLUMNS))
    target.mkdir(parents=True)
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        X = centers[rng.integers(0, 5, n)] + rng.normal(0, 3, (n, COLUMNS))
        planted = rng.random(n) < 0.005
        X[planted] = rng.uniform(-200, 300, (int(planted.sum()), COLUMNS))
        columns = {f"m{j}": X[:, j] for j in range(COLUMNS)}
        # one reading a second from 2026-01-01: the report's time view reads this column for every row
        seconds = 1_767_225_600 + start + np.arange(n, dtype=np.int64)
        columns["event_time"] = pa.array(seconds * 1000, type=pa.timestamp("ms", tz="UTC"))
        pq.write_table(pa.table(columns), target / f"part-{part:06d}.parquet")


def write_config(root: Path, master: str) -> Path:
    config = {
        "name": "spark-scale",
        "source": {"url": "http://127.0.0.1:1/unused"},
        "processing": {"mode": "spark"},
        "spark": {"master": master},
        "modeling": {"algorithms": ALGORITHMS, "hyperparameters": "simple"},
        "output": {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports")},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the measured child


def child(engine: str, run_dir: Path, config_path: Path) -> None:
    from anomaly_detection.config import load_config
    from anomaly_detection.pipeline.stages import (
        detect_stage,
        preprocess_stage,
        report_stage,
        resolve_stage,
        select_stage,
        spark_stage,
    )
    from anomaly_detection.runs import RunPaths, run_logging

    config = load_config(config_path)
    paths = RunPaths(run_dir, Path(config.output.reports_dir))
    with run_logging(paths):
        resolve_stage(config, paths)
        clock = {}
        started = time.perf_counter()
        if engine == "spark":
            spark_stage(config, paths, "preprocess")
            clock["preprocess"] = time.perf_counter() - started
            spark_stage(config, paths, "detect")
        else:
            preprocess_stage(config, paths)
            clock["preprocess"] = time.perf_counter() - started
            for algorithm in config.modeling.algorithms:
                detect_stage(config, paths, algorithm)
        clock["detect"] = time.perf_counter() - started - clock["preprocess"]
        mark = time.perf_counter()
        select_stage(config, paths, run_meta={"mode": engine})
        report_stage(config, paths)
        clock["select+report"] = time.perf_counter() - mark
    print(json.dumps(clock))


# --------------------------------------------------------------------------- the parent


def classify(proc: psutil.Process) -> str:
    try:
        name, cmdline = proc.name(), " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if name == "java":
        return (
            "jvm" if "SparkSubmit" in cmdline else "other"
        )  # the launcher's short-lived JVM is not the driver
    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline or "pyspark/daemon" in cmdline:
        return "workers"
    if "spark_jobs/" in cmdline:
        return "driver"
    if name.startswith("python"):
        return "stages"
    return "other"


def describe(proc: psutil.Process) -> str:
    try:
        args = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    script = next((a for a in args if a.endswith(".py") or a.startswith("pyspark.")), "")
    return f"{proc.name()} {Path(script).name if script.endswith('.py') else script}".strip()


class TreeSampler(threading.Thread):
    """Peak RSS per group of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak: dict[str, int] = {"driver": 0, "workers": 0, "stages": 0, "tree": 0}
        self.jvm_peak = 0
        self.by_process: dict[int, tuple[int, str]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = {"driver": 0, "workers": 0, "stages": 0}
            jvm = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                group = classify(proc)
                try:
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if group not in ("jvm", *now):
                    continue
                peak, label = self.by_process.get(proc.pid, (0, ""))
                if rss > peak or not label:  # described again: a launcher script becomes java by exec
                    peak, label = rss, describe(proc)
                self.by_process[proc.pid] = (peak, label)
                if group == "jvm":
                    # a JVM forking a Python worker briefly shows a copy of itself: count the largest once
                    jvm = max(jvm, rss)
                    self.jvm_peak = max(self.jvm_peak, rss)
                else:
                    now[group] += rss
            now["driver"] += jvm
            for group, value in now.items():
                self.peak[group] = max(self.peak[group], value)
            self.peak["tree"] = max(self.peak["tree"], sum(now.values()))
            self.stop.wait(self.interval)


def measure(engine: str, root: Path, table: Path, config_path: Path, timeout: float) -> dict:
    run_dir = root / "runs" / f"{engine}-{table.name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "raw").mkdir(parents=True)
    (run_dir / "models").mkdir()
    os.symlink(table, run_dir / "flattened.parquet")
    command = [sys.executable, __file__, "--child", engine, str(run_dir), str(config_path)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.communicate()
        return {"status": f"did not finish within {timeout:.0f}s", "wall": time.perf_counter() - started}
    finally:
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join((err or "").strip().splitlines()[-5:])
        return {"status": f"failed (exit {proc.returncode}): {tail}", "wall": wall}
    results = json.loads((run_dir / "results.json").read_text())
    best = results["best"]
    return {
        "status": "ok",
        "wall": wall,
        "stages": json.loads(out.strip().splitlines()[-1]),
        "peak": sampler.peak,
        "jvm_peak": sampler.jvm_peak,
        "processes": sorted(sampler.by_process.values(), reverse=True)[:4],
        "rows": results["rows"]["scored"],
        "best": f"{best['algorithm']} {best['params']}",
        "anomalies": best["anomaly_count"],
        "report_bytes": (run_dir / "report.html").stat().st_size,
    }


def fmt_gib(value: int) -> str:
    return f"{value / GiB:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--no-native", action="store_true", help="skip the native path")
    parser.add_argument("--no-spark", action="store_true", help="skip the Spark path")
    parser.add_argument(
        "--native-timeout",
        type=float,
        default=1200,
        help="seconds before a native run counts as not finishing",
    )
    parser.add_argument("--spark-timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "RUN_DIR", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    subprocess.run([str(ROOT / "scripts" / "check_java.sh")], check=True)
    root = Path(tempfile.mkdtemp(prefix="spark-scale-"))
    config_path = write_config(root, args.master)
    print(
        f"Spark path at scale: {COLUMNS} numeric columns, simple mode, {', '.join(ALGORITHMS)}, master {args.master}"
    )
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GiB:.0f} GiB; work dir {root}\n"
    )
    header = f"{'rows':>11} {'engine':<7} {'wall s':>8} {'rows/s':>10} {'driver peak':>12} {'(JVM)':>10} {'py workers':>11} {'stages':>10}  stages s (pre/detect/select+report), best, anomalies"
    print(header)
    print("-" * len(header))
    figures = []
    try:
        for rows in args.rows:
            table = root / f"table-{rows}"
            write_table(table, rows)
            engines = ([] if args.no_spark else ["spark"]) + ([] if args.no_native else ["native"])
            for engine in engines:
                timeout = args.spark_timeout if engine == "spark" else args.native_timeout
                got = measure(engine, root, table, config_path, timeout)
                figures.append((rows, engine, got))
                if got["status"] != "ok":
                    print(f"{rows:>11,} {engine:<7} {got['wall']:>8.1f}  {got['status']}", flush=True)
                    continue
                peak, stages = got["peak"], got["stages"]
                driver = peak["driver"] if engine == "spark" else peak["stages"]
                print(
                    f"{rows:>11,} {engine:<7} {got['wall']:>8.1f} {rows / got['wall']:>10,.0f} {fmt_gib(driver):>12} "
                    f"{fmt_gib(got['jvm_peak']) if engine == 'spark' else '-':>10} {fmt_gib(peak['workers']):>11} {fmt_gib(peak['stages']):>10}  "
                    f"{stages['preprocess']:.0f}/{stages['detect']:.0f}/{stages['select+report']:.0f}, {got['best']}, {got['anomalies']:,}"
                    f" (report {got['report_bytes'] / 1e6:.1f} MB)",
                    flush=True,
                )
                print(
                    "             largest processes: "
                    + ", ".join(f"{label} {fmt_gib(rss)}" for rss, label in got["processes"]),
                    flush=True,
                )
            if not args.keep:
                shutil.rmtree(table, ignore_errors=True)
                shutil.rmtree(root / "runs", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    spark = [(rows, got) for rows, engine, got in figures if engine == "spark" and got["status"] == "ok"]
    if len(spark) >= 2:
        (r0, g0), (r1, g1) = spark[0], spark[-1]
        print(
            f"\nscaling {r0:,} -> {r1:,} rows ({r1 / r0:.0f}x): Spark wall time x{g1['wall'] / g0['wall']:.1f} "
            f"(linear would be x{r1 / r0:.0f}); per-row cost x{(g1['wall'] / r1) / (g0['wall'] / r0):.2f}"
        )
    print("driver peak = JVM + the job's Python driver (Spark); the whole Python process (native)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
