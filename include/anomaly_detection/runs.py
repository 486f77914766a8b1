"""Run identity, the run directory layout, and the run's log file (with secrets masked)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: The repository (``include/anomaly_detection/runs.py`` -> ``<repo>``): default home of the folders below.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _folder(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable) or PROJECT_ROOT / default)


def configs_dir() -> Path:
    """The config files a run may name (``ANOMALY_CONFIGS_DIR``, default ``<repo>/configs``)."""
    return _folder("ANOMALY_CONFIGS_DIR", "configs")


def runs_dir() -> Path:
    """Where run directories go (``ANOMALY_RUNS_DIR``, default ``<repo>/runs``)."""
    return _folder("ANOMALY_RUNS_DIR", "runs")


def reports_dir() -> Path:
    """Where published report copies go (``ANOMALY_REPORTS_DIR``, default ``<repo>/reports``)."""
    return _folder("ANOMALY_REPORTS_DIR", "reports")


def spark_jobs_dir() -> Path:
    """The spark-submit entry files (``ANOMALY_SPARK_JOBS_DIR``, default ``<repo>/spark_jobs``)."""
    return _folder("ANOMALY_SPARK_JOBS_DIR", "spark_jobs")


PACKAGE_LOGGER = "anomaly_detection"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def make_run_id(now: datetime | None = None) -> str:
    """A new run id such as ``20261127T050102Z-3fa9c1``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def safe_run_id(value: str) -> str:
    """Make any run id (e.g. Airflow's ``manual__2026-11-27T05:00:00+00:00``) safe in file names."""
    cleaned = _UNSAFE.sub("_", value.strip()).strip("._")
    if not cleaned:
        raise ValueError(f"run id {value!r} has no characters usable in a file name")
    return cleaned[:128]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunPaths:
    """Where every artefact of one run lives; ``root`` is ``<runs_dir>/<run_id>``."""

    root: Path
    reports_dir: Path

    @classmethod
    def create(cls, runs_dir: str | Path, reports_dir: str | Path, run_id: str) -> RunPaths:
        paths = cls(Path(runs_dir).resolve() / safe_run_id(run_id), Path(reports_dir).resolve())
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.raw.mkdir(exist_ok=True)
        paths.models.mkdir(exist_ok=True)
        return paths

    @property
    def run_id(self) -> str:
        return self.root.name

    raw = property(lambda self: self.root / "raw")
    models = property(lambda self: self.root / "models")
    config = property(lambda self: self.root / "config.resolved.yaml")
    #: The ingested table: one file (native ingestion) or a directory of page part files (bulk).
    flattened = property(lambda self: self.root / "flattened.parquet")
    features = property(lambda self: self.root / "features.parquet")
    #: Spark's scaled features: a directory of part files with ``_pos`` (and ``_label``) columns.
    spark_features = property(lambda self: self.root / "features.spark.parquet")
    report_sample = property(lambda self: self.root / "report_sample.parquet")
    kept_rows = property(lambda self: self.root / "kept_rows.npy")
    #: Positions (in ``flattened``) of the rows that repeat an earlier row; they are scored too.
    duplicate_rows = property(lambda self: self.root / "duplicate_rows.npy")
    #: The same from the Spark path: a directory of part files with one column ``_pos``.
    spark_duplicate_rows = property(lambda self: self.root / "duplicate_rows.spark.parquet")
    labels = property(lambda self: self.root / "labels.npy")
    summary = property(lambda self: self.root / "data_summary.json")
    ingest_info = property(lambda self: self.root / "ingest.json")
    results = property(lambda self: self.root / "results.json")
    anomalies = property(lambda self: self.root / "anomalies.csv")
    log = property(lambda self: self.root / "pipeline.log")
    report = property(lambda self: self.root / "report.html")

    @property
    def published_report(self) -> Path:
        return self.reports_dir / f"{self.run_id}.html"


class SecretMask(logging.Filter):
    """Replace every registered secret value in log messages with ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self.values: set[str] = set()
        self.forwards: list[Callable[[str], Any]] = []

    def add(self, *values: str) -> None:
        new = {v for v in values if v and len(v) >= 3} - self.values
        self.values.update(new)
        for value in new:
            for forward in self.forwards:
                forward(value)

    def forward_to(self, masker: Callable[[str], Any]) -> None:
        """Also hand every secret to ``masker`` (e.g. Airflow's ``mask_secret`` for its task logs)."""
        if masker not in self.forwards:
            self.forwards.append(masker)
            for value in self.values:
                masker(value)

    def mask(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.values:
            record.msg = self.mask(record.getMessage())
            record.args = None
        return True


SECRET_MASK = SecretMask()


@contextlib.contextmanager
def run_logging(paths: RunPaths, *, echo: bool = False) -> Iterator[logging.Logger]:
    """Append the package's log records to ``pipeline.log`` (and stderr when ``echo``)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.FileHandler(paths.log, encoding="utf-8")]
    if echo:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(SECRET_MASK)
        logger.addHandler(handler)
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
