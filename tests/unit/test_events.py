"""Events: consecutive flagged points of one series (anomaly_detection.detect.events)."""

from __future__ import annotations

import numpy as np

from anomaly_detection.detect.events import EVENT_COLUMNS, group_events


def _hours(*values: int) -> np.ndarray:
    return np.datetime64("2024-03-04T00:00", "ns") + np.array(values) * np.timedelta64(1, "h")


def test_neighbouring_flags_of_one_series_form_one_event_with_its_peak() -> None:
    events = group_events(
        rows=np.array([10, 11, 12, 40, 7]),
        series=np.array([0, 0, 0, 0, 1]),
        order=np.array([3, 4, 5, 9, 3]),  # series 1's point 3 neighbours nothing of series 0
        times=_hours(3, 4, 5, 9, 3),
        scores=np.array([1.0, 4.0, 2.0, 3.0, 0.5]),
        series_names=["sensor-a", "sensor-b"],
    )
    assert list(events.columns) == EVENT_COLUMNS
    assert events["rows"].tolist() == [3, 1, 1]  # by decreasing peak score
    first = events.iloc[0]
    assert (first["series"], first["peak_row"], first["peak_score"]) == ("sensor-a", 11, 4.0)
    assert first["duration_seconds"] == 2 * 3600
    assert str(first["peak"]) == "2024-03-04 04:00:00+00:00"
    assert events["series"].tolist() == ["sensor-a", "sensor-a", "sensor-b"]
    assert events["event"].tolist() == [1, 2, 3]


def test_a_gap_of_one_unflagged_point_splits_events_and_no_flags_give_no_events() -> None:
    events = group_events(
        rows=np.array([1, 3]),
        series=np.zeros(2),
        order=np.array([1, 3]),
        times=_hours(1, 3),
        scores=np.ones(2),
    )
    assert len(events) == 2 and events["duration_seconds"].tolist() == [0.0, 0.0]
    empty = group_events(
        rows=np.array([]), series=np.array([]), order=np.array([]), times=_hours(), scores=np.array([])
    )
    assert empty.empty and list(empty.columns) == EVENT_COLUMNS
