"""The native path's memory guard: estimate what a dataset needs before it is loaded in full.

The native path holds the whole table in pandas, then a float64 feature matrix and the detectors'
working copies of it. Its peak is estimated as::

    peak = BASELINE + FRAME_FACTOR x frame bytes + MATRIX_FACTOR x rows x numeric columns x 8

``frame bytes`` is pandas' deep memory use of the flattened records (counted page by page while a
native ingestion reads them, or the uncompressed size in a Parquet file's metadata before it is
read). The factors are the copies the stages make (``bench/native_scale.py`` prints the estimates
beside the measured peak). Past the budget (``processing.native_memory_budget_mb``, default half of
the machine's physical memory) a native run stops with advice to use Spark; an ``auto`` run goes to
Spark instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from anomaly_detection.config import ProcessingConfig
from anomaly_detection.errors import PipelineError

MIB = 1024**2
#: Interpreter, pandas, scikit-learn and pyarrow loaded, before any data.
BASELINE = 360 * MIB
#: The frame read, a deduplicated copy and the text columns' Python objects.
FRAME_FACTOR = 2.0
#: The feature matrix, its imputed and scaled copies, and the detectors' distance work.
MATRIX_FACTOR = 5.0


class MemoryBudgetExceeded(PipelineError):
    """The dataset would not fit the native path's memory budget."""

    def __init__(self, estimate: MemoryEstimate, budget: int, where: str) -> None:
        self.estimate, self.budget = estimate, budget
        super().__init__(
            f"{where}: the native path would need about {gib(estimate.peak_bytes)} for {estimate.describe()}, above its "
            f"budget of {gib(budget)} (processing.native_memory_budget_mb); set processing.mode: spark "
            f"(or auto, which routes such data to Spark), or raise the budget"
        )


@dataclass(frozen=True)
class MemoryEstimate:
    rows: int
    columns: int
    numeric_columns: int
    frame_bytes: int

    @property
    def peak_bytes(self) -> int:
        return int(
            BASELINE + FRAME_FACTOR * self.frame_bytes + MATRIX_FACTOR * self.rows * self.numeric_columns * 8
        )

    def describe(self) -> str:
        return f"{self.rows:,} rows x {self.columns:,} columns ({self.numeric_columns:,} numeric, {gib(self.frame_bytes)} in pandas)"


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / MIB:.0f} MiB"


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes(processing: ProcessingConfig) -> int:
    """The configured budget, or half of this machine's physical memory."""
    if processing.native_memory_budget_mb is not None:
        return processing.native_memory_budget_mb * MIB
    return physical_memory_bytes() // 2


def estimate_parquet(path: Path) -> MemoryEstimate:
    """Estimate from Parquet metadata alone (a file or a directory of part files); nothing is read."""
    files = sorted(Path(path).glob("*.parquet")) if Path(path).is_dir() else [Path(path)]
    rows = frame_bytes = 0
    columns: set[str] = set()
    numeric: set[str] = set()
    for file in files:
        meta = pq.ParquetFile(file).metadata
        rows += meta.num_rows
        frame_bytes += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        schema = meta.schema.to_arrow_schema()
        for field in schema:
            columns.add(field.name)
            if _is_numeric(field.type):
                numeric.add(field.name)
    return MemoryEstimate(rows, len(columns), len(numeric), frame_bytes)


def _is_numeric(kind) -> bool:
    import pyarrow.types as t

    return t.is_integer(kind) or t.is_floating(kind) or t.is_boolean(kind) or t.is_decimal(kind)


class IngestMemoryGuard:
    """Counts the frames a native ingestion builds, page by page, and stops it past the budget."""

    def __init__(self, processing: ProcessingConfig) -> None:
        self.budget = budget_bytes(processing)
        self.rows = self.frame_bytes = 0
        self.columns: set[str] = set()
        self.numeric: set[str] = set()

    def estimate(self) -> MemoryEstimate:
        return MemoryEstimate(self.rows, len(self.columns), len(self.numeric), self.frame_bytes)

    def __call__(self, chunk) -> None:
        """Add one flattened page (a DataFrame); raise :class:`MemoryBudgetExceeded` past the budget."""
        self.rows += len(chunk)
        self.frame_bytes += int(chunk.memory_usage(deep=True, index=False).sum())
        self.columns.update(map(str, chunk.columns))
        self.numeric.update(str(c) for c, kind in chunk.dtypes.items() if kind.kind in "biuf")
        estimate = self.estimate()
        if estimate.peak_bytes > self.budget:
            raise MemoryBudgetExceeded(
                estimate, self.budget, f"ingestion stopped after {self.rows:,} records"
            )


def check_parquet(path: Path, processing: ProcessingConfig) -> MemoryEstimate:
    """Refuse to load ``path`` natively when its estimate is past the budget."""
    estimate = estimate_parquet(path)
    budget = budget_bytes(processing)
    if estimate.peak_bytes > budget:
        raise MemoryBudgetExceeded(estimate, budget, f"not loading {path}")
    return estimate
