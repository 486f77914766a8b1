"""contamination auto on generated data with a known number of planted anomalies."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_detection.detect.grid import DetectorSettings, run_grid
from anomaly_detection.detect.threshold import MAX_SHARE, MIN_SHARE, cut_scores


def planted_table(share: float, *, rows: int = 10_000, columns: int = 12, seed: int = 1):
    """Gaussian rows with ``share`` of them planted: half a shifted cluster, half scattered uniformly
    over a range wider than the data's; min-max scaled like the pipeline's features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (rows, columns))
    planted = rng.choice(rows, int(share * rows), replace=False)
    half = len(planted) // 2
    X[planted[:half]] += rng.normal(4, 0.5, (1, columns))
    X[planted[half:]] = rng.uniform(-6, 6, (len(planted) - half, columns))
    X = (X - X.min(axis=0)) / (X.max(axis=0) - X.min(axis=0))
    truth = np.zeros(rows, dtype=bool)
    truth[planted] = True
    return X, truth


@pytest.mark.parametrize("share", [0.01, 0.05, 0.20])
def test_auto_flags_within_twice_the_planted_count(share):
    X, truth = planted_table(share)
    (detection,) = run_grid("ensemble", {}, X, DetectorSettings(contamination="auto", random_state=42))
    flagged = int(detection.labels.sum())
    assert truth.sum() / 2 <= flagged <= 2 * truth.sum(), (flagged, int(truth.sum()))
    # most flagged rows are planted ones, and the basis is in words for the verdict
    assert truth[detection.labels == 1].mean() > 0.8
    assert "mixture" in detection.info["threshold_rule"]


def test_auto_is_deterministic_and_counts_every_copy():
    X, _ = planted_table(0.01, rows=3_000)
    X = np.vstack([X, np.repeat(X[:1] + 2.0, 30, axis=0)])  # one absurd record, 30 copies
    settings = DetectorSettings(contamination="auto", random_state=3)
    (a,) = run_grid("ensemble", {}, X, settings)
    (b,) = run_grid("ensemble", {}, X, settings)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels[-30:].all()


def test_auto_stays_between_the_floor_and_the_cap():
    rng = np.random.default_rng(0)
    smooth = rng.normal(0, 1, 5_000)  # no upper group at all
    cut = cut_scores(smooth, "auto")
    assert MIN_SHARE * 5_000 <= cut.labels.sum() <= MAX_SHARE * 5_000
    halves = np.r_[rng.normal(0, 1, 2_500), rng.normal(20, 1, 2_500)]
    cut = cut_scores(halves, "auto")
    assert cut.labels.sum() == MAX_SHARE * 5_000 and "capped" in cut.basis
    assert cut_scores(np.full(100, 0.3), "auto").labels.sum() >= 1
