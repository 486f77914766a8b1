"""Shared by the ingestion tests: a fake sleep, a one-call ingest, generated rows, an offset API."""

from __future__ import annotations

from pathlib import Path

from http_fixtures import json_body

from anomaly_detection.config import build_config
from anomaly_detection.ingest.native import ingest

SECRET = "s3cr3t-T0ken-value-42"


class Sleeps(list):
    """A fake ``sleep`` that records the delays asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def run(url: str, raw_dir: Path, *, sleep=None, processing: dict | None = None, **source):
    config = build_config(
        {"source": {"url": url, "backoff_seconds": 0.01, **source}, "processing": processing or {}}
    )
    return ingest(config.source, config.processing, raw_dir, sleep=sleep if sleep is not None else Sleeps())


def rows(start: int, stop: int) -> list[dict]:
    return [{"id": i, "value": i * 1.5} for i in range(start, stop)]


def raw_files(raw_dir: Path) -> list[str]:
    return sorted(p.name for p in raw_dir.iterdir())


def offset_handler(total: int, offset_param="offset", limit_param="limit"):
    def handler(req):
        offset, limit = int(req.query[offset_param]), int(req.query[limit_param])
        return json_body(rows(offset, min(offset + limit, total)))

    return handler
