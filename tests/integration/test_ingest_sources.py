"""Several URLs of the same kind in one run, on both ingestion paths, over loopback HTTP."""

from __future__ import annotations

import json

import pandas as pd
from http_fixtures import api_server  # noqa: F401

from anomaly_detection.config import build_config
from anomaly_detection.pipeline.stages import ingest_stage
from anomaly_detection.runs import RunPaths


def run_ingest(tmp_path, urls: list[str], mode: str):
    cfg = build_config(
        {
            "source": {
                "url": urls,
                "pagination": {"type": "offset", "page_size": 5},
                "backoff_seconds": 0.01,
            },
            "processing": {"mode": mode},
            "validation": {"min_rows": 2},
        }
    )
    paths = RunPaths.create(tmp_path / "runs", tmp_path / "reports", f"sources-{mode}")
    return ingest_stage(cfg, paths), paths


def serve(api_server, path: str, rows: list[dict]) -> None:  # noqa: F811
    def handler(req):
        offset, limit = int(req.query.get("offset", 0)), int(req.query.get("limit", 5))
        return 200, {}, rows[offset : offset + limit]

    api_server.route(path, handler)


def two_sources(api_server):  # noqa: F811
    serve(api_server, "/jan", [{"v": float(i), "kind": "a"} for i in range(12)])
    serve(api_server, "/feb", [{"v": i, "extra": True} for i in range(7)])
    return [api_server.url("/jan") + "?token=hunter22", api_server.url("/feb")]


def table(paths: RunPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.flattened)


def test_native_concatenates_with_source_and_one_snapshot_per_url(api_server, tmp_path):  # noqa: F811
    urls = two_sources(api_server)
    info, paths = run_ingest(tmp_path, urls, "native")
    frame = table(paths)
    assert info["rows"] == 19 and info["sources"] == 2
    assert (
        frame["_source"].tolist()
        == [api_server.url("/jan") + "?token=***"] * 12 + [api_server.url("/feb")] * 7
    )
    for n, pages in ((1, 3), (2, 2)):  # 12 rows: 5+5+2; 7 rows: 5+2 (a short page ends paging)
        manifest = json.loads((paths.raw / f"source-{n}" / "manifest.json").read_text())
        assert len(manifest) == pages
    assert not (paths.raw / "manifest.json").exists()


def test_bulk_concatenates_with_source_and_one_snapshot_per_url(api_server, tmp_path):  # noqa: F811
    urls = two_sources(api_server)
    info, paths = run_ingest(tmp_path, urls, "spark")
    frame = table(paths).sort_values(["_source", "v"]).reset_index(drop=True)
    assert info["rows"] == 19 and info["sources"] == 2
    assert frame["_source"].value_counts().to_dict() == {
        api_server.url("/jan") + "?token=***": 12,
        api_server.url("/feb"): 7,
    }
    assert sorted(frame.columns) == ["_source", "extra", "kind", "v"]
    assert frame["extra"].isna().sum() == 12 and frame["kind"].isna().sum() == 7
    for n in (1, 2):
        assert (paths.raw / f"source-{n}" / "manifest.jsonl").is_file()
    assert not list(paths.flattened.glob(".source-*"))


def test_a_single_url_keeps_raw_as_it_is(api_server, tmp_path):  # noqa: F811
    serve(api_server, "/one", [{"v": float(i)} for i in range(6)])
    info, paths = run_ingest(tmp_path, [api_server.url("/one")], "native")
    assert info["sources"] == 1 and (paths.raw / "manifest.json").is_file()
    assert "_source" not in table(paths).columns
