"""Per-anomaly explanations on small frames where the anomalous column is known."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from anomaly_detection.config import build_config
from anomaly_detection.detect.explain import (
    explain,
    feature_counts,
    fit_reference,
    named_features,
    rarity_z,
    robust_spread,
)
from anomaly_detection.features.derive import FeaturePlan, FeatureSpec, feature_plan
from anomaly_detection.features.preprocess import preprocess

NAMES = ["fare", "distance", "tip", "passengers"]
MEASURES = FeaturePlan([FeatureSpec(n, "measure", n) for n in NAMES])
SD = re.compile(r"\(([+-][0-9.]+) SD\)")


def sample(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(50, 5, size=(n, len(NAMES))), columns=NAMES)


def test_the_planted_column_and_its_direction_are_named_first():
    table = sample()
    reference = fit_reference(table, np.ones(len(table), bool), MEASURES)
    rows = pd.DataFrame([table.median()] * 4).reset_index(drop=True)
    rows.loc[0, "fare"] += 40  # fare far above
    rows.loc[1, "tip"] -= 30  # tip far below
    rows.loc[2, "distance"] += 35
    rows.loc[2, "passengers"] += 20  # distance strongest, passengers second
    rows.loc[3, :] += 0.01  # nothing stands out
    got = explain(reference, rows)
    assert got[0].features == ["fare"] and got[0].z[0] > 5
    assert got[1].features == ["tip"] and got[1].z[0] < -5
    assert got[2].features == ["distance", "passengers"] and got[2].z[0] > got[2].z[1] > 2
    assert len(got[3].features) == 1 and abs(got[3].z[0]) < 2  # the strongest is always named
    assert (
        got[0].codes.startswith("fare:+") and got[0].text.startswith("fare ↑") and "vs median" in got[0].text
    )
    assert got[1].text.startswith("tip ↓")
    counts = feature_counts(got)
    assert sum(counts.values()) == 5 and counts[got[3].features[0]] == 2
    assert named_features(e.codes for e in got) == counts


def test_values_and_medians_are_observed_values_never_imputed_ones():
    rng = np.random.default_rng(1)
    felt = np.where(rng.random(1_000) < 0.78, np.nan, rng.integers(1, 4, 1_000).astype(float))
    table = pd.DataFrame({"mag": rng.normal(2, 0.3, 1_000), "felt": felt})
    out = preprocess(table, build_config({}).processing)
    assert "felt missing" in out.feature_names  # more than half missing: an indicator feature
    reference = fit_reference(table, np.ones(len(table), bool), feature_plan(out.summary))
    observed_median = float(np.nanmedian(felt))
    rows = pd.DataFrame({"mag": [2.0, 2.0], "felt": [635.0, np.nan]})
    high, missing = explain(reference, rows)
    assert high.texts[0] == f"felt ↑ 635 vs median {observed_median:g} ({high.z[0]:+.1f} SD)"
    assert all("felt ↑" not in t and "felt ↓" not in t for t in missing.texts)
    assert all("missing" not in name for name in high.features + missing.features)


def test_a_value_missing_where_it_rarely_is_reads_missing():
    table = sample()
    reference = fit_reference(table, np.ones(len(table), bool), MEASURES)
    row = pd.DataFrame([table.median()]).reset_index(drop=True)
    row.loc[0, "tip"] = np.nan
    (got,) = explain(reference, row)
    assert got.features[0] == "tip" and got.texts[0].startswith("tip missing (in ")


def test_no_z_score_comes_from_a_spread_of_about_zero():
    table = sample()
    table["passengers"] = 1.0 + np.random.default_rng(3).normal(0, 1e-9, len(table))  # spread ~0, MAD > 0
    table["tip"] = 1.0  # one value on every row: MAD 0
    span = np.array([30.0, 30.0, 30.0, 5.0])
    assert (robust_spread(table.to_numpy(), table.median().to_numpy(), span) >= 0.01 * span).all()
    scaling = {
        "min": dict(zip(NAMES, [30.0, 30.0, 0.0, 1.0])),
        "max": dict(zip(NAMES, [60.0, 60.0, 5.0, 6.0])),
    }
    reference = fit_reference(table, np.ones(len(table), bool), MEASURES, scaling=scaling)
    row = pd.DataFrame([table.median()]).reset_index(drop=True)
    row.loc[0, "passengers"] = 6.0
    (got,) = explain(reference, row)
    assert got.features[0] == "passengers"
    z = float(SD.search(got.texts[0]).group(1))
    assert 1 < z <= 1 / 0.01 and "1e5" not in got.text
    row.loc[0, "passengers"], row.loc[0, "tip"] = 1.0, 0.0
    (got,) = explain(reference, row)
    assert got.texts[0] == "tip = 0: rare value, in 0% of rows"  # a mostly-constant field: no SD figure


def test_codes_and_booleans_read_as_rare_values_never_in_sd_units():
    rng = np.random.default_rng(2)
    n = 2_000
    table = pd.DataFrame(
        {
            "fare": rng.normal(10, 2, n),
            "ratecodeid": rng.choice([1, 2, 5], n, p=[0.9, 0.07, 0.03]),
            "zone_id": rng.integers(1, 50, n),  # evenly spread codes: never rare
            "tsunami": (rng.random(n) < 0.01).astype(int),
        }
    )
    table.loc[7, "ratecodeid"] = 99
    table.loc[8, "tsunami"] = 1
    out = preprocess(table, build_config({}).processing)
    roles = {name: r["role"] for name, r in out.summary["roles"].items()}
    assert roles == {
        "fare": "measure",
        "ratecodeid": "categorical",
        "zone_id": "categorical",
        "tsunami": "boolean",
    }
    reference = fit_reference(table, np.ones(n, bool), feature_plan(out.summary))
    got = explain(reference, table.iloc[[7, 8]])
    assert got[0].texts[0] == "ratecodeid = 99: rare value, in 0.05% of rows"
    assert got[1].features[0] == "tsunami" and got[1].texts[0].startswith("tsunami = 1: rare value, in ")
    for explanation in explain(reference, table):
        for name, text in zip(explanation.features, explanation.texts):
            if name != "fare":
                assert "SD" not in text, text


def test_rarity_strength_matches_the_two_sided_normal_tail():
    assert rarity_z(1.0) == 0 and rarity_z(0.05) == pytest.approx(1.96, abs=0.01)


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="do not match"):
        fit_reference(sample(5), np.ones(4, bool), MEASURES)
    with pytest.raises(ValueError, match="no sampled rows"):
        fit_reference(sample(0), np.ones(0, bool), MEASURES)
