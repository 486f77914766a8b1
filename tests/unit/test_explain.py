"""Per-anomaly explanations on small frames where the anomalous column is known."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_detection.detect.explain import explain, feature_counts, fit_reference, robust_scale, zscores

NAMES = ["fare", "distance", "tip", "passengers"]


def scaled_sample(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.5, 0.05, size=(n, len(NAMES))), 0, 1)


def test_the_planted_column_and_its_direction_are_named_first():
    X = scaled_sample()
    reference = fit_reference(X, np.ones(len(X), bool), NAMES)
    rows = np.tile(np.median(X, axis=0), (4, 1))
    rows[0, 0] += 0.4  # fare far above
    rows[1, 2] -= 0.3  # tip far below
    rows[2, 1] += 0.35
    rows[2, 3] += 0.2  # distance strongest, passengers second
    rows[3, :] += 0.001  # nothing stands out
    got = explain(reference, rows)
    assert got[0].features == ["fare"] and got[0].z[0] > 5
    assert got[1].features == ["tip"] and got[1].z[0] < -5
    assert got[2].features == ["distance", "passengers"] and got[2].z[0] > got[2].z[1] > 2
    assert len(got[3].features) == 1 and abs(got[3].z[0]) < 2  # the strongest is always named
    assert got[0].codes.startswith("fare:+") and "fare ↑" in got[0].text and "vs median" in got[0].text
    assert got[1].text.startswith("tip ↓")
    counts = feature_counts(got)
    assert sum(counts.values()) == 5 and counts[got[3].features[0]] == 2
    assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_values_and_medians_are_shown_in_the_api_units():
    X = scaled_sample()
    scaling = {"min": {n: 100.0 for n in NAMES}, "max": {n: 300.0 for n in NAMES}}
    reference = fit_reference(X, np.ones(len(X), bool), NAMES, scaling=scaling)
    row = np.median(X, axis=0, keepdims=True).copy()
    row[0, 0] = 0.95
    (got,) = explain(reference, row)
    assert got.values[0] == pytest.approx(0.95 * 200 + 100)
    assert got.medians[0] == pytest.approx(np.median(X[:, 0]) * 200 + 100)


def test_only_normal_rows_form_the_reference():
    X = scaled_sample(200)
    X[:20, 0] = 1.0  # the model's anomalies sit high on fare
    normal = np.ones(len(X), bool)
    normal[:20] = False
    with_flags = fit_reference(X, normal, NAMES)
    assert with_flags.median[0] == pytest.approx(np.median(X[20:, 0]))
    assert with_flags.rows == 180


def test_a_constant_feature_still_explains_a_row_that_leaves_it():
    X = scaled_sample()
    X[:, 3] = 0.5  # MAD and mean deviation 0
    assert robust_scale(X, np.median(X, axis=0))[3] > 0
    reference = fit_reference(X, np.ones(len(X), bool), NAMES)
    row = np.median(X, axis=0, keepdims=True).copy()
    row[0, 3] = 0.6
    (got,) = explain(reference, row)
    assert got.features[0] == "passengers" and np.isfinite(got.z[0]) and got.z[0] > 1000
    assert np.isfinite(zscores(reference, row)).all()


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="do not match"):
        fit_reference(np.zeros((5, 3)), np.ones(5, bool), NAMES)
    with pytest.raises(ValueError, match="no sampled rows"):
        fit_reference(np.zeros((0, 4)), np.ones(0, bool), NAMES)
