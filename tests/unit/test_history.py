"""The run-history store and the drift statistics computed from quantile summaries."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
from scipy import stats

from anomaly_detection.report import history


def profile(values: np.ndarray) -> dict:
    return history.feature_profile(values)


def exact_psi(before: np.ndarray, after: np.ndarray) -> float:
    edges = np.quantile(before, np.linspace(0.1, 0.9, 9))
    e = np.bincount(np.searchsorted(edges, before, side="left"), minlength=10) / len(before)
    a = np.bincount(np.searchsorted(edges, after, side="left"), minlength=10) / len(after)
    e, a = np.maximum(e, 1e-4), np.maximum(a, 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 1.0])
def test_psi_and_ks_from_quantiles_match_the_raw_samples(shift):
    rng = np.random.default_rng(1)
    before, after = rng.normal(0, 1, 5000), rng.normal(shift, 1, 5000)
    a, b = profile(before), profile(after)
    assert history.psi(a, b) == pytest.approx(
        exact_psi(before, after), abs=0.02 + 0.05 * exact_psi(before, after)
    )
    assert history.ks(a, b) == pytest.approx(stats.ks_2samp(before, after).statistic, abs=0.015)


def test_drift_flags_only_the_shifted_feature_and_states_the_threshold():
    rng = np.random.default_rng(2)
    X0 = rng.normal(0, 1, (4000, 3))
    X1 = X0 + np.array([0.0, 1.0, 0.05])
    drifts = history.drift(history.profiles(X0, ["a", "b", "c"]), history.profiles(X1, ["a", "b", "c"]))
    assert [d.feature for d in drifts][0] == "b"
    levels = {d.feature: d.level for d in drifts}
    assert levels == {"a": "stable", "b": "drifted", "c": "stable"}
    b = drifts[0]
    assert b.psi >= history.PSI_THRESHOLD == 0.2 and b.ks_significant
    assert b.current_mean - b.previous_mean == pytest.approx(1.0)
    assert b.ks_critical == pytest.approx(1.358 * np.sqrt(2 / 4000))


def test_a_point_mass_feature_does_not_break_psi():
    ones = profile(np.ones(1000))
    mixed = profile(np.r_[np.ones(500), np.zeros(500)])
    assert history.psi(ones, ones) == pytest.approx(0.0)
    assert history.psi(ones, mixed) > history.PSI_THRESHOLD
    assert history.ks(ones, mixed) == pytest.approx(0.5, abs=0.02)


def _append_many(path: str, worker: int) -> None:
    for i in range(50):
        history.append(
            history.history_path(path), {"run_id": f"w{worker}-{i}", "source_key": "s", "pad": "x" * 5000}
        )


def test_concurrent_appends_never_interleave(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["pad"] == "x" * 5000 for line in lines)
    assert len(history.read(tmp_path / "history.jsonl")) == 200


def test_last_line_per_run_wins_corrupt_lines_are_skipped_and_order_is_first_seen(tmp_path):
    path = tmp_path / "history.jsonl"
    history.append(path, {"run_id": "r1", "source_key": "s", "anomaly_share": 0.1})
    history.append(path, {"run_id": "r2", "source_key": "s", "anomaly_share": 0.2})
    with open(path, "a") as f:
        f.write('{"run_id": "broken"\n\n')
    history.append(path, {"run_id": "r1", "source_key": "s", "anomaly_share": 0.15})  # r1 rendered again
    history.append(path, {"run_id": "x1", "source_key": "other"})
    history.append(path, {"run_id": "r3", "source_key": "s"})
    entries = history.read(path)
    assert [e["run_id"] for e in entries] == ["r1", "r2", "x1", "r3"]
    assert entries[0]["anomaly_share"] == 0.15
    assert [e["run_id"] for e in history.previous_runs(entries, "s", "r3", 10)] == ["r1", "r2"]
    assert [e["run_id"] for e in history.previous_runs(entries, "s", "r2", 10)] == ["r1"]
    assert [e["run_id"] for e in history.previous_runs(entries, "s", "new", 2)] == ["r2", "r3"]
    assert history.previous_runs(entries, "s", "r3", 0) == []
    assert history.read(tmp_path / "missing.jsonl") == []


def test_source_key_depends_on_url_records_path_and_name():
    key = history.source_key("http://h/records", "data", "demo")
    assert key == history.source_key("http://h/records", "data", "demo") and len(key) == 16
    assert key != history.source_key("http://h/records", "items", "demo")
    assert key != history.source_key("http://h/other", "data", "demo")
    assert key != history.source_key("http://h/records", "data", "prod")


def test_nan_and_numpy_values_are_stored_as_valid_json(tmp_path):
    path = tmp_path / "history.jsonl"
    history.append(
        path, {"run_id": "r", "score": float("nan"), "rows": np.int64(5), "share": np.float32(0.5)}
    )
    (entry,) = history.read(path)
    assert entry["score"] is None and entry["rows"] == 5 and entry["share"] == 0.5


def test_a_line_cut_by_a_killed_writer_costs_only_that_line(tmp_path):
    path = tmp_path / "history.jsonl"
    history.append(path, {"run_id": "r1", "source_key": "s"})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"run_id": "r2", "source_k')  # the writer died here
    history.append(path, {"run_id": "r3", "source_key": "s"})
    assert [e["run_id"] for e in history.read(path)] == ["r1", "r3"]
