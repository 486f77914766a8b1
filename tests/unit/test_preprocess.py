import numpy as np
import pandas as pd
import pytest

from anomaly_detection.config import ProcessingConfig
from anomaly_detection.errors import DataError
from anomaly_detection.features.preprocess import (
    extract_labels,
    find_duplicate_rows,
    impute_kmeans,
    minmax_scale,
    preprocess,
    select_features,
)


def _cfg(**kw):
    return ProcessingConfig(**kw)


def test_duplicates_marked_after_their_first_occurrence():
    table = pd.DataFrame({"a": [1, 2, 1, 3, 2], "b": ["x", "y", "x", "z", "y"]})
    assert find_duplicate_rows(table).tolist() == [False, False, True, False, True]


def test_duplicates_compared_over_all_columns_even_unhashable():
    table = pd.DataFrame({"a": [1, 1, 1], "tags": [["x"], ["x"], ["y"]]})
    assert find_duplicate_rows(table).tolist() == [False, True, False]


def test_preprocess_keeps_every_row_and_marks_duplicates():
    table = pd.DataFrame({"a": [1.0, 2.0, 1.0, 3.0] * 3, "b": [5.0, 6.0, 5.0, 7.0] * 3})
    out = preprocess(table, _cfg(missing_values="median"))
    assert out.features.shape == (12, 2) and out.rows.tolist() == list(range(12))
    assert out.duplicates.sum() == out.summary["duplicates"] == 12 - 3
    assert out.summary["rows_after"] == out.summary["rows_before"] == 12


def test_feature_selection_reasons():
    n = 50
    table = pd.DataFrame(
        {
            "id": np.arange(n),
            "row_number": np.arange(100, 100 + n),
            "userId": np.random.default_rng(0).integers(0, 1000, n),
            "paid": np.random.default_rng(1).normal(size=n),
            "constant": np.full(n, 3.0),
            "empty": np.full(n, np.nan),
            "text": ["a"] * n,
            "flag": np.arange(n) % 2 == 0,
            "x": np.random.default_rng(2).normal(size=n),
            "skip": np.random.default_rng(3).normal(size=n),
        }
    )
    plan, roles, dropped, _ = select_features(table, _cfg(exclude_features=["skip"]))
    assert plan.names == ["paid", "flag", "x"]
    assert dropped["id"] == "identifier: integers stepping by a constant"
    assert dropped["row_number"] == "identifier: integers stepping by a constant"
    assert dropped["userId"] == "identifier: id-like name with 47 distinct values"  # not a code
    assert dropped["constant"] == "constant (3)"
    assert dropped["empty"] == "all values missing"
    assert dropped["text"] == "constant (a)"
    assert dropped["skip"] == "in exclude_features"
    assert roles["flag"].role == "boolean" and roles["paid"].role == "measure"


def test_include_features_unknown_column_is_named():
    with pytest.raises(DataError, match="nope"):
        select_features(pd.DataFrame({"a": [1.0, 2.0]}), _cfg(include_features=["nope"]))


def test_minmax_scale_ignores_nan():
    values = np.array([[0.0, 10.0], [5.0, np.nan], [10.0, 20.0]])
    scaled, lo, hi = minmax_scale(values)
    assert np.allclose(scaled[[0, 2]], [[0, 0], [1, 1]])
    assert scaled[1, 0] == 0.5 and np.isnan(scaled[1, 1])
    assert lo.tolist() == [0, 10] and hi.tolist() == [10, 20]


def test_kmeans_imputation_uses_nearest_centroid_on_observed_columns():
    rng = np.random.default_rng(0)
    low = rng.normal(0.1, 0.01, size=(100, 3))
    high = rng.normal(0.9, 0.01, size=(100, 3))
    values = np.vstack([low, high, [[0.9, np.nan, 0.9], [0.1, 0.1, np.nan]]])
    filled, method = impute_kmeans(values, n_clusters=2, random_state=0)
    assert method.startswith("kmeans")
    assert abs(filled[-2, 1] - 0.9) < 0.05  # from the high cluster
    assert abs(filled[-1, 2] - 0.1) < 0.05  # from the low cluster
    assert not np.isnan(filled).any()
    assert np.array_equal(filled[:200], values[:200])


def test_too_few_complete_rows_falls_back_to_median(caplog):
    values = np.array([[1.0, np.nan], [np.nan, 2.0], [3.0, 4.0], [5.0, np.nan]])
    filled, method = impute_kmeans(values, n_clusters=3, random_state=0)
    assert method.startswith("median fallback")
    assert filled[0, 1] == 3.0 and filled[1, 0] == 3.0
    assert "median" in caplog.text


def test_preprocess_end_to_end_summary_and_infinity():
    table = pd.DataFrame(
        {
            "id": range(8),
            "a": [1.0, 2.0, 2.0, np.inf, 4.0, 5.0, 6.0, 7.0],
            "b": [1.0, 1.5, 1.5, 3.0, np.nan, 2.0, 2.5, 3.5],
            "label": [0, 0, 0, 1, 0, 0, 0, 1],
        }
    )
    table = pd.concat([table, table.iloc[[0]]], ignore_index=True)  # one duplicate row
    out = preprocess(table, _cfg(missing_values="median"), label_column="label")
    assert out.features.shape == (9, 2)
    assert out.feature_names == ["a", "b"]
    assert out.labels.tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert out.rows.tolist() == list(range(9))
    assert out.duplicates.tolist() == [False] * 8 + [True]
    assert (out.features >= 0).all() and (out.features <= 1).all()
    s = out.summary
    assert s["rows_before"] == 9 and s["rows_after"] == 9 and s["duplicates"] == 1
    assert s["infinite_values"] == 1 and s["imputed_values"] == 2
    assert s["columns_dropped"]["label"] == "label column"
    assert s["missing_per_column"]["b"] == 1


@pytest.mark.parametrize(
    "table, message",
    [
        (pd.DataFrame({"name": ["a", "b", "c"], "city": ["x", "y", "z"]}), "no usable numeric feature"),
        (pd.DataFrame({"a": [1.0]}), "at least 2 rows"),
        (pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [2, 2, 2]}), "no usable numeric feature"),  # only copies
    ],
)
def test_bad_tables_fail_clearly(table, message):
    with pytest.raises(DataError, match=message):
        preprocess(table, _cfg())


def test_constant_columns_only_is_a_clear_error():
    table = pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0], "c": ["x", "y", "z"]})
    with pytest.raises(DataError, match="no usable numeric feature"):
        preprocess(table, _cfg())


@pytest.mark.parametrize(
    "values, message",
    [
        ([0, 1, 2], "row 2 has 2"),
        (["yes", "no", "maybe"], "row 2 has 'maybe'"),
        ([0, None, 1], "missing"),
    ],
)
def test_bad_labels_name_row_and_value(values, message):
    with pytest.raises(DataError, match=message):
        extract_labels(pd.DataFrame({"y": values}), "y")


def test_label_column_must_exist():
    with pytest.raises(DataError, match="'y' not found"):
        extract_labels(pd.DataFrame({"a": [1]}), "y")


def test_text_labels_are_mapped():
    assert extract_labels(pd.DataFrame({"y": ["Anomaly", "normal", "TRUE", "0"]}), "y").tolist() == [
        1,
        0,
        1,
        0,
    ]
