"""Time context (features/context.py) and the time_series detector on generated series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_detection.detect.detectors.base import DetectorSettings
from anomaly_detection.detect.detectors.time_series import join_context, time_series
from anomaly_detection.detect.grid import Detection
from anomaly_detection.detect.threshold import cut_scores
from anomaly_detection.features.context import FENCE, UNJUDGED, build_context

STEP = pd.Timedelta(minutes=10)


def daily_series(
    days: int = 21, *, seed: int = 0, level: float = 100.0, start: str = "2026-03-02"
) -> pd.DataFrame:
    """A daily cycle (peak at noon) with noise; every value inside [level - 50, level + 50]."""
    times = pd.date_range(start, periods=int(days * pd.Timedelta(days=1) / STEP), freq=STEP, tz="UTC")
    hours = times.hour + times.minute / 60
    rng = np.random.default_rng(seed)
    value = level + 40 * np.exp(-(((hours - 12) / 3) ** 2)) + rng.normal(0, 1.5, len(times))
    return pd.DataFrame({"timestamp": times, "value": value})


def flags(frame: pd.DataFrame, key: str | None = None) -> tuple[np.ndarray, object]:
    context = build_context(
        frame, time_column="timestamp", times=frame["timestamp"], measures=["value"], series_key=key
    )
    assert context is not None
    scores = context.scores.max(axis=1)
    return scores > FENCE, context


def plant_dip(frame: pd.DataFrame, day: str, value: float) -> np.ndarray:
    """A dip at noon of ``day`` (two hours): the normal noon peak replaced by ``value``."""
    when = (frame["timestamp"] >= pd.Timestamp(f"{day} 11:00", tz="UTC")) & (
        frame["timestamp"] < pd.Timestamp(f"{day} 13:00", tz="UTC")
    )
    frame.loc[when, "value"] = value + np.random.default_rng(1).normal(0, 1.5, int(when.sum()))
    return when.to_numpy()


def test_a_contextual_dip_inside_the_global_range_is_flagged_and_the_daily_peaks_are_not() -> None:
    frame = daily_series()
    dip = plant_dip(frame, "2026-03-16", 105.0)  # the night level: inside the global range
    assert frame["value"].min() < 105 < frame["value"].max()
    flagged, context = flags(frame)
    assert context.facts[0].season == "day"
    assert flagged[dip].sum() >= dip.sum() // 2
    noon = (frame["timestamp"].dt.hour.between(11, 12)).to_numpy() & ~dip
    assert flagged[noon].sum() == 0  # the ordinary peaks
    assert flagged[~dip].sum() == 0


def test_each_series_key_is_judged_against_its_own_history() -> None:
    quiet, loud = daily_series(seed=2, level=10.0), daily_series(seed=3, level=1_000.0)
    quiet["sensor"], loud["sensor"] = "quiet", "loud"
    planted = (quiet["timestamp"] >= pd.Timestamp("2026-03-12 03:00", tz="UTC")) & (
        quiet["timestamp"] < pd.Timestamp("2026-03-12 03:40", tz="UTC")
    )
    quiet.loc[planted, "value"] = 400.0  # far below the loud sensor's values: globally ordinary
    frame = pd.concat([loud, quiet], ignore_index=True)
    flagged, context = flags(frame, key="sensor")
    assert context.series_names == ["loud", "quiet"] and len(context.facts) == 2
    in_quiet = np.r_[np.zeros(len(loud), bool), planted.to_numpy()]
    assert flagged[in_quiet].all()
    assert flagged.sum() == in_quiet.sum()
    order = context.order[len(loud) :]
    assert (np.sort(order) == np.arange(len(quiet))).all()  # each series has its own time order


def test_the_first_day_is_judged_against_the_week_after_it() -> None:
    frame = daily_series()
    spike = plant_dip(frame, "2026-03-02", 400.0)  # on the first day, far above anything after
    flagged, _ = flags(frame)
    assert flagged[spike].all() and flagged[~spike].sum() == 0


def test_gaps_irregular_steps_and_repeated_timestamps_keep_the_dip_and_stay_quiet_elsewhere() -> None:
    frame = daily_series()
    dip = plant_dip(frame, "2026-03-16", 105.0)
    rng = np.random.default_rng(4)
    keep = rng.random(len(frame)) > 0.1  # 10 % of the points missing: irregular steps
    gap = (frame["timestamp"] >= pd.Timestamp("2026-03-09 06:00", tz="UTC")) & (
        frame["timestamp"] < pd.Timestamp("2026-03-09 12:00", tz="UTC")
    )
    keep &= ~gap.to_numpy()  # a six-hour gap
    irregular = frame[keep | dip].reset_index(drop=True)
    repeats = irregular.sample(50, random_state=5)  # 50 timestamps twice
    irregular = pd.concat([irregular, repeats], ignore_index=True)
    planted = np.r_[dip[keep | dip], np.zeros(len(repeats), bool)]
    planted |= irregular["timestamp"].isin(irregular.loc[planted, "timestamp"]).to_numpy()
    flagged, context = flags(irregular)
    assert context.facts[0].repeated_times == 50 and context.facts[0].gaps >= 1
    assert flagged[planted].sum() >= planted.sum() // 2
    assert flagged[~planted].sum() == 0


def test_short_series_and_undated_rows_get_no_context() -> None:
    frame = daily_series(days=1)  # 144 points over one day: under the two days needed
    assert build_context(frame, time_column="timestamp", times=frame["timestamp"], measures=["value"]) is None
    frame = daily_series(days=5)
    frame.loc[:9, "timestamp"] = pd.NaT
    _, context = flags(frame)
    assert (context.series[:10] == -1).all() and (context.scores[:10] == UNJUDGED).all()
    first_day = (frame["timestamp"] < pd.Timestamp("2026-03-03", tz="UTC")).to_numpy().copy()
    first_day[:10] = False
    assert (context.scores[first_day] >= 0).all()  # judged against the week after it


def test_time_series_detector_flags_above_the_fence_and_needs_a_context() -> None:
    context = np.array([[0.0], [7.5], [UNJUDGED], [6.0]])
    X = np.hstack([np.zeros((4, 2)), context])
    detection = time_series(X, {}, DetectorSettings(context_columns=1))
    assert detection.labels.tolist() == [0, 1, 0, 0] and detection.threshold == 7.5
    with pytest.raises(ValueError, match="needs a time context"):
        time_series(X, {}, DetectorSettings())


def test_the_joined_ensemble_keeps_value_flags_only_where_the_time_view_does_not_know_the_value() -> None:
    rng = np.random.default_rng(0)
    value_scores = np.r_[rng.normal(0, 1, 996), [30.0, 31.0, 32.0, 33.0]]
    cut = cut_scores(value_scores, "auto")
    assert cut.grouped and cut.labels[-4:].all()
    value = Detection("ensemble", {}, value_scores, cut.labels, cut.threshold, 0.0, {"members": ["a"]})
    time_scores = np.zeros(1000)
    time_scores[-4:] = [0.0, UNJUDGED, 3.0, 0.0]  # familiar, unjudged, new, familiar
    time_scores[10] = 9.0  # the time view alone
    joined = join_context(value, cut, time_scores[:, None], "auto", 0)
    assert np.flatnonzero(joined.labels).tolist() == [10, 997, 998]
    assert joined.threshold == 1.0
    assert (joined.scores[joined.labels == 1] >= 1).all() and (joined.scores[joined.labels == 0] < 1).all()
    assert "time view flags 1 row" in joined.info["threshold_rule"]
