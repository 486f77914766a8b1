"""The scored outputs every detector writes, native or Spark, and what select and report read.

For the best configuration of each algorithm, a detect stage writes two Parquet datasets (a
single file from the native path, a directory of part files from Spark) into ``models/``:

``<algorithm>.flagged.parquet``
    One row per flagged anomaly: ``position`` (the row's index in ``flattened.parquet``, i.e. in
    the API's order), ``score`` and the scaled features ``f0``, ``f1``, ... (for the per-row
    explanations, :mod:`.explain`). Its size is the contamination share of the rows.
``<algorithm>.sample.parquet``
    A bounded sample of scored rows for the report's plots: ``position``, ``score``, ``anomaly``
    (0/1), ``sampled`` (true for the uniform random sample of at most ``report.plot_sample_size``
    rows; the ``report.top_anomalies`` highest-scoring rows are added with false), then the scaled
    features ``f0``, ``f1``, ... in the order of ``data_summary.json``'s ``features``.

Neither holds a full column of the dataset, so the select and report stages stay bounded in
memory whatever the row count, and need no Spark-specific branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_detection import atomic

#: Rows per batch when a dataset is scanned for the rows at given positions.
SCAN_BATCH_ROWS = 65_536

FLAGGED_SCHEMA = pa.schema([("position", pa.int64()), ("score", pa.float64())])
SAMPLE_META = ("position", "score", "anomaly", "sampled")


def feature_column(j: int) -> str:
    return f"f{j}"


def feature_columns(n: int) -> list[str]:
    """The stored names of the first ``n`` feature columns."""
    return [feature_column(j) for j in range(n)]


def parquet_files(path: Path) -> list[Path]:
    """The data files of a Parquet dataset: ``path`` itself, or the sorted part files of a directory."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found")
    return sorted(p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith((".", "_")))


def row_count(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def read_schema(path: Path) -> pa.Schema:
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"{path} holds no parquet files")
    return pq.read_schema(files[0])


def iter_batches(
    path: Path, *, columns: list[str] | None = None, batch_size: int = SCAN_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Every row of the dataset in order (files in name order, rows in file order), batch by batch."""
    for file in parquet_files(path):
        yield from pq.ParquetFile(file).iter_batches(batch_size=batch_size, columns=columns)


def head(path: Path, rows: int) -> pd.DataFrame:
    """The first ``rows`` rows of a dataset, reading no more than needed."""
    batches, taken = [], 0
    for batch in iter_batches(path, batch_size=max(rows, 1)):
        batches.append(batch.slice(0, rows - taken))
        taken += min(batch.num_rows, rows - taken)
        if taken >= rows:
            break
    if not batches:
        return read_schema(path).empty_table().to_pandas()
    return pa.Table.from_batches(batches).to_pandas()


def rows_at(path: Path, positions: np.ndarray) -> pd.DataFrame:
    """The rows at ``positions`` (row indices of the whole dataset), in the order given.

    One streaming pass: memory holds one batch plus the selected rows.
    """
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    wanted = positions[order]
    pieces: list[pa.Table] = []
    start = 0
    schema = read_schema(path)
    for batch in iter_batches(path):
        stop = start + batch.num_rows
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            pieces.append(pa.Table.from_batches([batch]).take(pa.array(wanted[lo:hi] - start)))
        start = stop
    if len(wanted) and (wanted[0] < 0 or wanted[-1] >= start):
        raise IndexError(
            f"row position {int(wanted[-1] if wanted[-1] >= start else wanted[0])} is outside {path} ({start} rows)"
        )
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()
    frame = table.to_pandas()
    restored = np.empty(len(order), dtype=np.int64)
    restored[order] = np.arange(len(order))
    return frame.iloc[restored].reset_index(drop=True)


def write_table(table: pa.Table, path: Path) -> None:
    """Write one Parquet file atomically (a temporary name, then a rename)."""
    with atomic.replacing(path) as tmp:
        pq.write_table(table, tmp)


def flagged_table(positions: np.ndarray, scores: np.ndarray, features: np.ndarray) -> pa.Table:
    columns: dict[str, np.ndarray] = {
        "position": np.asarray(positions, dtype=np.int64),
        "score": np.asarray(scores, dtype=np.float64),
    }
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:  # a flat buffer of rows (an empty (0, d) block keeps its d columns)
        features = features.reshape(len(columns["position"]), -1)
    for j in range(features.shape[1]):
        columns[feature_column(j)] = features[:, j]
    return pa.table(columns)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform random sample of ``min(n, size)`` of ``n`` rows."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def sample_table(
    positions: np.ndarray, scores: np.ndarray, labels: np.ndarray, sampled: np.ndarray, features: np.ndarray
) -> pa.Table:
    columns: dict[str, np.ndarray] = {
        "position": np.asarray(positions, dtype=np.int64),
        "score": np.asarray(scores, dtype=np.float64),
        "anomaly": np.asarray(labels, dtype=np.int8),
        "sampled": np.asarray(sampled, dtype=bool),
    }
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:  # a flat buffer of rows (an empty (0, d) block keeps its d columns)
        features = features.reshape(len(columns["position"]), -1)
    for j in range(features.shape[1]):
        columns[feature_column(j)] = features[:, j]
    return pa.table(columns)


def write_native(
    models_dir: Path,
    algorithm: str,
    *,
    scores: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    X: np.ndarray,
    plot_sample_size: int,
    top_anomalies: int,
    seed: int,
) -> None:
    """Write the flagged and sample files of one algorithm from in-memory arrays (the native path).

    ``scores``, ``labels`` and ``X`` (shape ``(n_rows, n_features)``) are per kept row;
    ``positions`` maps kept rows to their position in ``flattened.parquet``.
    """
    flagged = np.flatnonzero(labels == 1)
    write_table(
        flagged_table(positions[flagged], scores[flagged], X[flagged]), flagged_path(models_dir, algorithm)
    )
    random_rows = sample_rows(len(scores), plot_sample_size, seed)
    top = flagged[np.argsort(-scores[flagged], kind="stable")][:top_anomalies]
    rows = np.union1d(random_rows, top)
    sampled = np.isin(rows, random_rows)
    write_table(
        sample_table(positions[rows], scores[rows], labels[rows], sampled, X[rows]),
        sample_path(models_dir, algorithm),
    )


def flagged_path(models_dir: Path, algorithm: str) -> Path:
    return Path(models_dir) / f"{algorithm}.flagged.parquet"


def sample_path(models_dir: Path, algorithm: str) -> Path:
    return Path(models_dir) / f"{algorithm}.sample.parquet"


def read_flagged(path: Path, *, features: bool = False) -> pd.DataFrame:
    """The flagged rows, highest score first (ties by position); with ``features``, also ``f0``, ``f1``, ..."""
    files = parquet_files(path)
    names = list(FLAGGED_SCHEMA.names)
    if features and files:
        names += [n for n in pq.read_schema(files[0]).names if n.startswith("f") and n[1:].isdigit()]
    tables = [pq.read_table(f, columns=names) for f in files]
    frame = (
        pa.concat_tables(tables).to_pandas()
        if tables
        else pd.DataFrame({n: pd.Series(dtype="float64") for n in names})
    )
    frame = frame.astype({"position": "int64", "score": "float64"})
    return frame.sort_values(["score", "position"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


def read_sample(path: Path) -> pd.DataFrame:
    """The report sample, rows in position order."""
    tables = [pq.read_table(f) for f in parquet_files(path)]
    frame = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=list(SAMPLE_META))
    return frame.sort_values("position", kind="stable").reset_index(drop=True)


def repeats_among(positions: np.ndarray, duplicate_rows: Path) -> int | None:
    """How many of ``positions`` repeat an earlier row, from ``duplicate_rows.npy`` (native) or the
    ``duplicate_rows.spark.parquet`` folder (Spark); None when the duplicates were not recorded."""
    duplicate_rows = Path(duplicate_rows)
    if duplicate_rows.is_dir():
        repeats = pd.read_parquet(duplicate_rows).iloc[:, 0].to_numpy()
    elif duplicate_rows.suffix == ".npy" and duplicate_rows.exists():
        repeats = np.load(duplicate_rows)
    else:
        return None
    return int(np.isin(positions, repeats).sum())
