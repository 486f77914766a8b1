"""Run history per source, and feature drift between a run and the previous run of the same source.

The store is one JSON-lines file (``<runs_dir>/history.jsonl``): one line per finished run with its
id, time, source key, rows, best model, anomaly share, report file name and, per feature, the
mean, standard deviation and 101 quantiles (0 %, 1 %, ..., 100 %) of the run's uniform sample in
the API's units. Lines are appended under an exclusive ``flock``, so concurrent runs do not
interleave; a rewritten run (a report rendered again) appends a new line and the last line per
run id wins. A corrupt line is skipped with a warning; the store never stops a run.

Drift compares two runs' quantile summaries, so it needs no raw data of the earlier run:

* **PSI** (population stability index) over the previous run's deciles:
  ``PSI = sum((a_i - e_i) * ln(a_i / e_i))`` with ``e_i`` the previous and ``a_i`` the current
  share of rows in bin ``i`` (shares from the quantile summaries' CDFs, floored at 1e-4).
  The usual reading: below 0.1 stable, 0.1-0.2 moderate, 0.2 or more a significant shift;
  :data:`PSI_THRESHOLD` (0.2) is what the report calls "drifted".
* **KS statistic**: the largest gap between the two CDFs (each a piecewise-linear interpolation
  of its 101 quantiles, so accurate to about 0.01), with the two-sample 5 % critical value
  ``1.358 * sqrt((n + m) / (n m))`` for the sample sizes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

QUANTILES = np.linspace(0.0, 1.0, 101)
PSI_THRESHOLD = 0.2
PSI_MODERATE = 0.1
PSI_FLOOR = 1e-4
KS_ALPHA_COEFFICIENT = 1.358  # c(alpha) for alpha = 0.05
HISTORY_FILE = "history.jsonl"


def source_key(url: str, records_path: str | None, name: str) -> str:
    """A short stable key of a source: the redacted URL, the records path and the config name."""
    text = json.dumps([url, records_path or "", name])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def feature_profile(values: np.ndarray) -> dict[str, Any] | None:
    """Mean, standard deviation, count and 101 quantiles of one feature's finite values (or ``None``)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": [float(q) for q in np.quantile(values, QUANTILES)],
    }


def profiles(X: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`feature_profile` of every column of ``X`` (shape ``(n_rows, n_features)``) by name."""
    X = np.asarray(X, dtype=np.float64).reshape(-1, len(names))
    out = {}
    for j, name in enumerate(names):
        profile = feature_profile(X[:, j])
        if profile is not None:
            out[str(name)] = profile
    return out


def _cdf(quantiles: Sequence[float], x: np.ndarray, *, left: bool = False) -> np.ndarray:
    """The CDF described by 101 quantiles, linear between them, 0 below the minimum and 1 above the maximum.

    A value repeated among the quantiles is a point mass: ``left=False`` gives the CDF's value
    at it (mass included), ``left=True`` its limit from the left (mass excluded).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if left:
        unique, first = np.unique(q, return_index=True)
        probs = QUANTILES[first]
        return np.where(x <= q[0], 0.0, np.interp(x, unique, probs, left=0.0, right=1.0))
    unique, last = np.unique(q[::-1], return_index=True)
    probs = QUANTILES[::-1][last]
    return np.interp(x, unique, probs, left=0.0, right=1.0)


def psi(previous: Mapping[str, Any], current: Mapping[str, Any], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``previous`` over the previous deciles.

    Each decile edge that is a point mass of either run gets a bin of its own (the mass at that
    value), so discrete features compare their values' shares, not only the deciles.
    """
    q = np.asarray(previous["quantiles"], dtype=np.float64)
    edges = np.unique(q[np.linspace(0, 100, bins + 1).round().astype(int)][1:-1])

    def cuts(quantiles: Sequence[float]) -> np.ndarray:
        below, at = _cdf(quantiles, edges, left=True), _cdf(quantiles, edges)
        return np.diff(np.concatenate([[0.0], np.column_stack([below, at]).ravel(), [1.0]]))

    expected = np.maximum(cuts(previous["quantiles"]), PSI_FLOOR)
    actual = np.maximum(cuts(current["quantiles"]), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(previous: Mapping[str, Any], current: Mapping[str, Any]) -> float:
    """Kolmogorov-Smirnov statistic between two quantile summaries (largest CDF gap)."""
    grid = np.union1d(previous["quantiles"], current["quantiles"])
    return float(np.max(np.abs(_cdf(previous["quantiles"], grid) - _cdf(current["quantiles"], grid))))


def ks_critical(n: int, m: int) -> float:
    """Two-sample KS critical value at the 5 % level for sample sizes ``n`` and ``m``."""
    return KS_ALPHA_COEFFICIENT * math.sqrt((n + m) / (n * m)) if n and m else 1.0


@dataclass(frozen=True)
class FeatureDrift:
    """How one feature moved from the previous run to this one."""

    feature: str
    previous_mean: float
    current_mean: float
    psi: float
    ks: float
    ks_critical: float

    @property
    def level(self) -> str:
        """``drifted`` (PSI >= 0.2), ``moderate`` (PSI >= 0.1) or ``stable``."""
        return (
            "drifted" if self.psi >= PSI_THRESHOLD else "moderate" if self.psi >= PSI_MODERATE else "stable"
        )

    @property
    def ks_significant(self) -> bool:
        return self.ks > self.ks_critical


def drift(
    previous: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> list[FeatureDrift]:
    """Drift of every feature present in both runs' profiles, largest PSI first."""
    out = []
    for name in current:
        if name not in previous:
            continue
        a, b = previous[name], current[name]
        out.append(
            FeatureDrift(
                name, a["mean"], b["mean"], psi(a, b), ks(a, b), ks_critical(int(a["n"]), int(b["n"]))
            )
        )
    return sorted(out, key=lambda d: (-d.psi, d.feature))


# --------------------------------------------------------------------------- the store


def history_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / HISTORY_FILE


def append(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one run's line to the store under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # orjson writes NaN and infinities as null, so every line stays valid JSON
    line = orjson.dumps(entry, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8") + "\n"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if handle.seek(0, 2) > 0:
                handle.seek(-1, 2)
                if (
                    handle.read(1) != b"\n"
                ):  # a writer killed mid-line: end its fragment so this line stays whole
                    line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read(path: Path) -> list[dict[str, Any]]:
    """Every run in the store, last line per run id, in the order the runs were first recorded."""
    if not path.exists():
        return []
    first_seen: dict[str, int] = {}
    latest: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            lines = handle.readlines()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            run_id = str(entry["run_id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("history %s line %d skipped: %s", path, number, exc)
            continue
        first_seen.setdefault(run_id, number)
        latest[run_id] = entry
    return [latest[run_id] for run_id in sorted(first_seen, key=first_seen.__getitem__)]


def previous_runs(
    entries: Iterable[Mapping[str, Any]], key: str, run_id: str, limit: int
) -> list[dict[str, Any]]:
    """The runs of source ``key`` recorded before ``run_id`` (or all, if it is not recorded), oldest first."""
    same = [dict(e) for e in entries if e.get("source_key") == key]
    ids = [e["run_id"] for e in same]
    if run_id in ids:
        same = same[: ids.index(run_id)]
    return same[-limit:] if limit else []
