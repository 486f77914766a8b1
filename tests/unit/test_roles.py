"""Column roles and the feature plan on small in-memory tables."""

import numpy as np
import pandas as pd
import pytest

from anomaly_detection.config import build_config
from anomaly_detection.errors import ConfigError
from anomaly_detection.features.derive import FeaturePlan, paired_timestamps, plan_features, tail_shares
from anomaly_detection.features.roles import infer_role, infer_roles

N = 400
RNG = np.random.default_rng(0)


def processing(**overrides):
    return build_config({"processing": overrides}).processing


@pytest.mark.parametrize(
    ("name", "values", "role"),
    [
        ("magnitude", RNG.normal(size=N), "measure"),
        ("passenger_count", RNG.integers(1, 6, N), "measure"),  # a small count is still a magnitude
        ("payment_type", RNG.integers(1, 5, N), "categorical"),
        ("PULocationID", RNG.integers(1, 60, N), "categorical"),  # id-like name, few codes
        ("userId", RNG.permutation(N) * 7, "identifier"),
        ("row", np.arange(N), "identifier"),
        ("tsunami", RNG.integers(0, 2, N), "boolean"),
        ("ok", RNG.random(N) < 0.5, "boolean"),
        ("properties.time", 1_700_000_000_000 + RNG.integers(0, 10**9, N), "timestamp"),
        ("updated", 1_700_000_000 + RNG.integers(0, 10**6, N), "timestamp"),
        ("amount", 1_700_000_000_000 + RNG.integers(0, 10**9, N), "measure"),  # epoch-like, no time name
        ("city", RNG.choice(["Oslo", "Rome", "Lima"], N), "categorical"),
        ("comment", [f"note {i}" for i in range(N)], "identifier"),
        ("empty", np.full(N, np.nan), "ignored"),
    ],
)
def test_inferred_roles(name, values, role):
    assert infer_role(name, pd.Series(values)).role == role


def test_epoch_units_are_read_from_the_range():
    assert infer_role("time", pd.Series(1_700_000_000_000 + np.arange(N))).unit == "ms"
    assert infer_role("created_at", pd.Series(1_700_000_000 + np.arange(N))).unit == "s"
    assert infer_role("ts", pd.Series(1_700_000_000_000_000 + np.arange(N))).unit == "us"


def test_overrides_win_and_unknown_roles_are_refused():
    table = pd.DataFrame({"zip": RNG.integers(10_000, 10_050, N), "score": RNG.normal(size=N)})
    roles = infer_roles(table, processing(column_roles={"zip": "measure", "score": "ignored"}))
    assert roles["zip"].role == "measure" and roles["zip"].reason == "set in processing.column_roles"
    assert roles["score"].role == "ignored"
    with pytest.raises(ConfigError):
        processing(column_roles={"zip": "magnitude"})


def test_paired_timestamps_give_durations():
    names = ["tpep_pickup_datetime", "tpep_dropoff_datetime", "created_at", "closed_at", "updated"]
    assert paired_timestamps(names) == [
        ("tpep_pickup_datetime", "tpep_dropoff_datetime"),
        ("created_at", "closed_at"),
    ]


def test_the_plan_round_trips_and_computes_every_kind():
    n = 1_000
    busy = np.r_[np.full(7, 1.0), np.full(17, 4.0)]  # a daily cycle: few rows at night
    hours = RNG.choice(24, n, p=busy / busy.sum())
    start = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        RNG.integers(0, 30, n) * 86_400 + hours * 3_600, unit="s"
    )
    table = pd.DataFrame(
        {
            "start_time": start,
            "end_time": start + pd.Timedelta(minutes=30),
            "code": RNG.choice([1, 2, 3], n, p=[0.8, 0.15, 0.05]),
            "felt": np.where(RNG.random(n) < 0.7, np.nan, RNG.integers(1, 9, n)),
        }
    )
    roles = infer_roles(table, processing(column_roles={"code": "categorical"}))
    plan = plan_features(table, roles)
    assert FeaturePlan.from_dict(plan.to_dict()) == plan
    raw = plan.transform(table)
    assert raw["duration start_time → end_time"].eq(1_800).all()
    assert np.allclose(raw["start_time hour of day (sin)"] ** 2 + raw["start_time hour of day (cos)"] ** 2, 1)
    assert raw["felt missing"].tolist() == table["felt"].isna().astype(float).tolist()
    assert (
        raw.loc[table["code"] == 1, "code"].max() < raw.loc[table["code"] == 3, "code"].min()
    )  # rarer: higher


def test_tail_shares_never_make_evenly_spread_values_rare():
    assert tail_shares({"a": 10, "b": 10, "c": 10}, pd.Series(["a", "c"])).tolist() == [1.0, 1.0]
    shares = tail_shares({"a": 96, "b": 3, "c": 1}, pd.Series(["a", "b", "c", "new"]))
    assert shares.tolist() == [1.0, 0.04, 0.01, 0.005]


def test_an_even_spread_of_hours_gives_no_cycle_features():
    start = pd.Timestamp("2024-01-01") + pd.to_timedelta(RNG.integers(0, 30 * 86_400, 5_000), unit="s")
    table = pd.DataFrame({"time": start, "value": RNG.normal(size=5_000)})
    plan = plan_features(table, infer_roles(table, processing()))
    assert plan.names == ["value"]
