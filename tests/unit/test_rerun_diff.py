"""What a rerun changed: config keys, and flagged rows matched by content."""

from __future__ import annotations

import pandas as pd

from anomaly_detection.report.rerun_diff import compare, config_changes, flatten


def test_flatten_and_config_changes_ignore_output_dirs_and_name():
    before = {
        "name": "a",
        "modeling": {"contamination": 0.05, "algorithms": ["kmeans"]},
        "output": {"runs_dir": "/x"},
    }
    after = {
        "name": "b",
        "modeling": {"contamination": 0.1, "algorithms": ["kmeans"], "new": 1},
        "output": {"runs_dir": "/y"},
    }
    assert flatten(before)["modeling.contamination"] == 0.05
    assert config_changes(before, after) == [("modeling.contamination", 0.05, 0.1), ("modeling.new", None, 1)]


def write(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_rows_are_matched_by_their_fields_not_their_rank_or_order(tmp_path):
    before = write(
        tmp_path / "before.csv",
        [
            {"rank": 1, "score": 0.9, "explanation": "x ↑", "top_features": "x:+9", "id": 1, "x": 10.5},
            {"rank": 2, "score": 0.8, "explanation": "y ↑", "top_features": "y:+8", "id": 2, "x": 3.0},
            {"rank": 3, "score": 0.7, "explanation": "z ↑", "top_features": "z:+7", "id": 3, "x": 7.25},
        ],
    )
    after = write(
        tmp_path / "after.csv",
        [
            {"rank": 1, "score": 0.95, "explanation": "other", "top_features": "q", "id": 3, "x": 7.25},
            {"rank": 2, "score": 0.91, "explanation": "x ↑", "top_features": "x:+9", "id": 1, "x": 10.5},
            {"rank": 3, "score": 0.6, "explanation": "", "top_features": "", "id": 4, "x": 1.0},
            {"rank": 4, "score": 0.5, "explanation": "", "top_features": "", "id": 5, "x": 2.0},
        ],
    )
    diff = compare("run-1", before, after, previous_config={"modeling": {"contamination": 0.05}},
                   current_config={"modeling": {"contamination": 0.08}})  # fmt: skip
    assert (diff.previous_count, diff.current_count, diff.kept, diff.new_count, diff.gone_count) == (
        3,
        4,
        2,
        2,
        1,
    )
    assert diff.new["id"].tolist() == ["4", "5"] and diff.new["rank"].tolist() == ["3", "4"]
    assert diff.gone["id"].tolist() == ["2"]
    assert diff.changes == [("modeling.contamination", 0.05, 0.08)]
