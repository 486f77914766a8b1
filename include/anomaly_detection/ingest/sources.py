"""Several endpoints in one run: ``source.url`` as a list of URLs of the same kind.

Each URL is read on its own, exactly like a single source, into its own raw snapshot
``raw/source-1/``, ``raw/source-2/`` ...; the records are concatenated with a ``_source`` column
holding the URL (secrets redacted), which is never a feature. A single URL keeps ``raw/`` as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_detection.config import SourceConfig, redact_url
from anomaly_detection.ingest.native import IngestResult

#: The column naming each record's source URL (several URLs only).
SOURCE_COLUMN = "_source"


def source_raw_dir(raw_dir: Path, index: int, count: int) -> Path:
    """The raw snapshot directory of the ``index``-th (0-based) of ``count`` URLs."""
    return Path(raw_dir) if count == 1 else Path(raw_dir) / f"source-{index + 1}"


def per_url(source: SourceConfig) -> list[SourceConfig]:
    """One single-URL source per URL, every other setting shared."""
    return [source.model_copy(update={"url": url}) for url in source.urls]


def with_source_column(frame: pd.DataFrame, url: str) -> pd.DataFrame:
    """``frame`` with ``_source`` (the URL, redacted) as its first column."""
    frame = frame.drop(columns=[SOURCE_COLUMN], errors="ignore")
    frame.insert(0, SOURCE_COLUMN, redact_url(url))
    return frame


def _joined(values: list[str]) -> str:
    return "; ".join(dict.fromkeys(v for v in values if v))


def ingest_sources(
    ingest: Callable[..., IngestResult], source: SourceConfig, processing: Any, raw_dir: Path, **kwargs: Any
) -> IngestResult:
    """Run the native ``ingest`` once per URL and combine the results (one URL: unchanged)."""
    sources = per_url(source)
    if len(sources) == 1:
        return ingest(sources[0], processing, raw_dir, **kwargs)
    results = [
        ingest(single, processing, source_raw_dir(raw_dir, i, len(sources)), **kwargs)
        for i, single in enumerate(sources)
    ]
    frames = [with_source_column(r.frame, s.url) for r, s in zip(results, sources, strict=True)]
    first = results[0]
    for other in results[1:]:
        for original, renamed in other.stats.collisions.items():
            first.stats.collisions.setdefault(original, renamed)
    return IngestResult(
        frame=pd.concat(frames, ignore_index=True, sort=False),
        pages=[page for r in results for page in r.pages],
        raw_dir=Path(raw_dir),
        records_path=_joined([r.records_path for r in results]),
        stats=first.stats,
        notes=first.notes,
        truncated=any(r.truncated for r in results),
        secrets=sorted({s for r in results for s in r.secrets}),
        records_shape=_joined([r.records_shape for r in results]),
        warnings=[f"source-{i + 1}: {w}" for i, r in enumerate(results) for w in r.warnings],
    )


def _union_types(schemas: list[Any]) -> dict[str, Any]:
    """Column -> Arrow type over every part; a column typed differently by two sources is text."""
    import pyarrow as pa

    types: dict[str, Any] = {SOURCE_COLUMN: pa.string()}
    for schema in schemas:
        for field_ in schema:
            if field_.name == SOURCE_COLUMN:
                continue
            known = types.setdefault(field_.name, field_.type)
            if known != field_.type:
                types[field_.name] = pa.string()
    return types


def merge_parts(folders: list[Path], urls: list[str], parts_dir: Path) -> dict[str, str]:
    """Rewrite every source's part files into ``parts_dir`` under one schema with ``_source``;
    return the column -> type mapping."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [
        (url, path)
        for folder, url in zip(folders, urls, strict=True)
        for path in sorted(folder.glob("part-*.parquet"))
    ]
    types = _union_types([pq.read_schema(path) for _, path in parts])
    schema = pa.schema(list(types.items()))
    parts_dir.mkdir(parents=True, exist_ok=True)
    for number, (url, path) in enumerate(parts):
        table = pq.read_table(path)
        arrays = [
            pa.array([redact_url(url)] * table.num_rows, pa.string())
            if name == SOURCE_COLUMN
            else (
                table.column(name).cast(kind)
                if name in table.column_names
                else pa.nulls(table.num_rows, kind)
            )
            for name, kind in types.items()
        ]
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), parts_dir / f"part-{number:06d}.parquet")
        path.unlink()
    for folder in folders:
        folder.rmdir()
    return {name: str(kind) for name, kind in types.items()}


def bulk_ingest_sources(
    ingest_to_parquet: Callable[..., Any],
    source: SourceConfig,
    processing: Any,
    raw_dir: Path,
    parts_dir: Path,
    **kwargs: Any,
) -> Any:
    """Run the bulk ``ingest_to_parquet`` once per URL and merge the part files (one URL: unchanged)."""
    sources = per_url(source)
    if len(sources) == 1:
        return ingest_to_parquet(sources[0], processing, raw_dir, parts_dir, **kwargs)
    folders = [Path(parts_dir) / f".source-{i + 1}" for i in range(len(sources))]
    results = [
        ingest_to_parquet(single, processing, source_raw_dir(raw_dir, i, len(sources)), folders[i], **kwargs)
        for i, single in enumerate(sources)
    ]
    columns = merge_parts(folders, [s.url for s in sources], Path(parts_dir))
    first = results[0]
    first.records = sum(r.records for r in results)
    first.pages = sum(r.pages for r in results)
    first.requests = sum(r.requests for r in results)
    first.seconds = round(sum(r.seconds for r in results), 3)
    first.truncated = any(r.truncated for r in results)
    first.columns = columns
    first.parts_dir = Path(parts_dir)
    first.records_shape = _joined([r.records_shape for r in results])
    first.warnings = [f"source-{i + 1}: {w}" for i, r in enumerate(results) for w in r.warnings]
    return first
