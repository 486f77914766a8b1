"""The raw snapshot of an ingestion: every response body as a file, and a manifest listing the pages.

Two layouts share one interface (:class:`Snapshot`), used by :class:`~anomaly_detection.ingest.reader.ApiReader`:

* :class:`JsonSnapshot` (the native path): ``page-NNNNN.<json|html|txt>`` and ``manifest.json``,
  rewritten whenever an entry changes.
* :class:`GzipSnapshot` (the Spark path's bulk reader, shared by threads): gzip-compressed
  ``page-NNNNNN.<suffix>.gz`` and ``manifest.jsonl``, one JSON line appended per page once it has
  been read (each line one ``write(2)`` to a file opened for appending, so a killed process leaves
  whole lines), with the body's ``sha256`` and ``stored_bytes``.

Files are written under a temporary name and renamed into place, so a killed process never leaves
a half-written file under a final name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from anomaly_detection import atomic


@dataclass
class PageRecord:
    page: int
    url: str
    status: int
    content_type: str
    bytes: int
    file: str
    records: int = 0
    seconds: float = 0.0
    attempts: int = 1
    #: Raw files of earlier attempts whose 200 body was rejected (not valid JSON).
    set_aside: list[str] = field(default_factory=list)


MANIFEST_NAME = "manifest.jsonl"


#: zlib level 1: a quarter of level 6's CPU time for files about a fifth larger.
GZIP_LEVEL = 1


@dataclass
class RawPage(PageRecord):
    """A manifest line: :class:`~.ingest.PageRecord` plus the body's digest and compressed size."""

    sha256: str = ""
    stored_bytes: int = 0


class Snapshot(Protocol):
    """Where a reader keeps the raw bodies and the manifest of one ingestion."""

    raw_dir: Path

    def file_name(self, page: int, suffix: str) -> str:
        """The raw file name of ``page`` (``suffix`` after the page number)."""

    def save(self, name: str, body: bytes, **fields: Any) -> PageRecord:
        """Store ``body`` as ``name`` and return its manifest entry (``fields``: :class:`PageRecord`'s)."""

    def forget(self, record: PageRecord) -> None:
        """Take a page's entry out of the manifest (its body was set aside for a retry)."""

    def settle(self, record: PageRecord, records: int | None) -> None:
        """Record how many records a saved page held (None: it could not be read)."""

    def close(self) -> None:
        """Release open files."""


class JsonSnapshot:
    """Plain files and a ``manifest.json`` rewritten on every change (see the module docstring)."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = Path(raw_dir)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.pages: list[PageRecord] = []

    def file_name(self, page: int, suffix: str) -> str:
        return f"page-{page:05d}{suffix}"

    def save(self, name: str, body: bytes, **fields: Any) -> PageRecord:
        atomic.write_bytes(self.raw_dir / name, body)
        record = PageRecord(**fields)
        self.pages.append(record)
        self._write_manifest()
        return record

    def forget(self, record: PageRecord) -> None:
        self.pages.remove(record)
        self._write_manifest()

    def settle(self, record: PageRecord, records: int | None) -> None:
        if records is not None:
            record.records = records
        self._write_manifest()

    def close(self) -> None:
        """Nothing is held open."""

    def _write_manifest(self) -> None:
        manifest = [vars(p) for p in self.pages]
        atomic.write_bytes(self.raw_dir / "manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


class GzipSnapshot:
    """gzip-compressed files and an appended ``manifest.jsonl``, safe to share between threads."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = Path(raw_dir)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.raw_dir / MANIFEST_NAME
        self._lock = threading.Lock()
        self._manifest = os.open(
            self.manifest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644
        )

    def file_name(self, page: int, suffix: str) -> str:
        return f"page-{page:06d}{suffix}.gz"

    def save(self, name: str, body: bytes, **fields: Any) -> RawPage:
        """Store the body compressed; the page is listed only once :meth:`settle` is called."""
        packed = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        atomic.write_bytes(self.raw_dir / name, packed)
        return RawPage(**fields, sha256=hashlib.sha256(body).hexdigest(), stored_bytes=len(packed))

    def forget(self, record: PageRecord) -> None:
        """Nothing to do: a page is listed only once :meth:`settle` is called."""

    def settle(self, record: PageRecord, records: int | None) -> None:
        record.records = records  # type: ignore[assignment]  # None: the page could not be read
        line = orjson.dumps(vars(record)) + b"\n"
        with self._lock:
            written = os.write(self._manifest, line)
        if written != len(line):
            raise OSError(
                f"only {written} of {len(line)} bytes of a manifest line were written to {self.manifest_path}"
            )

    def close(self) -> None:
        with self._lock:
            if self._manifest >= 0:
                os.close(self._manifest)
                self._manifest = -1
