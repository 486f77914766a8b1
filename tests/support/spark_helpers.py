"""Data and settings shared by the Spark test modules (test_spark_jobs.py, test_spark_cluster.py):
a generated table with planted outliers, a run directory holding it, and test-only Spark settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from anomaly_detection.config import build_config
from anomaly_detection.runs import RunPaths

N_ROWS = 2_000
N_OUTLIERS = 20
N_DUPLICATES = 25
JOB_TIMEOUT = 300
#: Test-only: these JVMs live under a minute on tiny data, where the C1 JIT alone starts ~40% faster
#: on a busy 2-core VM. Production keeps the full JIT (long jobs need C2).
QUICK_JVM = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}


def java_available() -> bool:
    return shutil.which("java") is not None


requires_spark = pytest.mark.skipif(not java_available(), reason="Java is not on PATH")


# --------------------------------------------------------------------------- data


def make_table(n: int = N_ROWS, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    """Four clusters in (x, y, z), ~1% planted far outliers, NaNs, one inf, duplicates appended after
    their originals, a constant, an id, a constant-step sequence, text, timestamps, an empty column.

    Returns the table and the positions of the planted outliers' first occurrences.
    """
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0], [6, 6, 0], [0, 6, 6], [6, 0, 6]], dtype=float)
    cluster = rng.integers(0, 4, n)
    xyz = centers[cluster] + rng.normal(0, 0.6, (n, 3))
    count = cluster * 10 + rng.integers(0, 3, n)
    outliers = rng.choice(n, N_OUTLIERS, replace=False)
    direction = rng.normal(size=(N_OUTLIERS, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    xyz[outliers] = 3.0 + direction * rng.uniform(13, 16, (N_OUTLIERS, 1))
    count[outliers] = rng.integers(0, 40, N_OUTLIERS)
    table = pd.DataFrame(
        {
            "event_id": rng.permutation(n) + 1000,
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "count": count,
            "flag": np.isin(cluster, [1, 3]),
            "const": 3.0,
            "city": rng.choice(["Lyon", "Oslo", "Lima"], n),
            "meta.note": rng.choice(["a b", "c.d", None], n),
            "seen_at": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
            "empty": np.nan,
            "is_anomaly": np.isin(np.arange(n), outliers).astype(np.int64),
        }
    )
    normal = np.setdiff1d(np.arange(n), outliers)
    holes = rng.choice(normal, 61, replace=False)
    table.loc[holes[:30], "x"] = np.nan
    table.loc[holes[30:60], "y"] = np.nan
    table.loc[holes[60], "z"] = np.inf
    table.insert(1, "seq", np.arange(n) * 3 + 5)  # an ID by its constant step, not by its name
    # duplicates land after their original, so the kept rows are 0..n-1 and "seq" keeps its step
    duplicated = rng.choice(n, N_DUPLICATES, replace=False)
    keys = np.concatenate([np.arange(n, dtype=float), rng.uniform(duplicated + 0.5, n)])
    order = np.argsort(keys, kind="stable")
    full = pd.concat([table, table.iloc[duplicated]]).iloc[order].reset_index(drop=True)
    first_position = np.argsort(order)[:n]  # where original row i ended up
    return full, np.sort(first_position[outliers])


def write_run(root: Path, table: pd.DataFrame, overrides: dict) -> tuple[RunPaths, Path]:
    paths = RunPaths.create(root / "runs", root / "reports", "spark-test")
    table.to_parquet(paths.flattened, index=False)
    output = {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports")}
    config = build_config({"name": "spark-test", "output": output}, overrides)
    paths.config.write_text(yaml.safe_dump(config.redacted(), sort_keys=False), encoding="utf-8")
    return paths, paths.config


# --------------------------------------------------------------------------- reading the outputs


def spark_features(paths: RunPaths) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None]:
    """Spark's ``features.spark.parquet`` in position order: kept positions, the named features and
    the labels (``None`` without a label column). Tests read all of it; the pipeline never does."""
    import json

    names = json.loads(paths.summary.read_text())["features"]
    stored = pd.read_parquet(paths.spark_features).sort_values("_pos").reset_index(drop=True)
    features = stored[[f"f{j}" for j in range(len(names))]].set_axis(names, axis=1)
    labels = stored["_label"].to_numpy() if "_label" in stored else None
    return stored["_pos"].to_numpy(), features, labels


def flagged_positions(paths: RunPaths, algorithm: str) -> np.ndarray:
    from anomaly_detection.detect.scored import flagged_path, read_flagged

    return np.sort(read_flagged(flagged_path(paths.models, algorithm))["position"].to_numpy())
