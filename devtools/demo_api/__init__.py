"""A built-in demo REST API serving synthetic sensor records with planted anomalies.

The module has three parts:

* :class:`DemoDataset` -- a pure, deterministic generator. The data is stored column by column in
  numpy arrays, so a million records take a couple of seconds and well under 500 MB; JSON-ready
  records are built only for the slice a request asks for.
* :func:`make_server` / :func:`serve_in_thread` -- a small ``http.server`` API with offset/limit
  and next-URL pagination (``/records``), the ground truth (``/planted``) and ``/health``.
* :func:`main` -- ``python -m devtools.demo_api`` serves the API until SIGTERM/SIGINT.

Every record looks like::

    {"id": 17, "timestamp": "2026-01-01T00:17:00Z",
     "sensor": {"site": "plant-north", "location": {"lat": 52.5212, "lon": 13.4043}},
     "metrics": {"m01": 101.2345, "m02": null, ...},
     "tags": ["calibrated", "indoor"], "status": "ok"}

Normal records come from four correlated Gaussian clusters. Planted anomalies deviate by 6-10
standard deviations (random signs) on at least three metrics and never have missing values.
About ``missing_share`` of the metric cells of normal records are ``null`` or absent, and about
``duplicate_share`` of the records are exact copies of an earlier normal record.
"""

from devtools.demo_api.dataset import EPOCH, MAX_FEATURES, MAX_LIMIT, DemoDataset
from devtools.demo_api.server import DemoServer, base_url, main, make_server, records_page, serve_in_thread

__all__ = [
    "EPOCH",
    "MAX_FEATURES",
    "MAX_LIMIT",
    "DemoDataset",
    "DemoServer",
    "base_url",
    "main",
    "make_server",
    "records_page",
    "serve_in_thread",
]
