"""Finding the records in every common JSON shape (ingest/records.py, ingest/tables.py) and the
cursor rule of the pagination, as pure functions."""

from __future__ import annotations

import logging

import pytest

from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.flatten import FlattenStats, flatten_record, unique_names
from anomaly_detection.ingest.pagination import PagingNotes, next_cursor
from anomaly_detection.ingest.records import find_records


def socrata(columns: list[str], rows: list[list], **view) -> dict:
    descriptors = [
        {"id": i, "name": name.strip(":").upper(), "fieldName": name, "dataTypeName": "text", "position": i}
        for i, name in enumerate(columns)
    ]
    return {"meta": {"view": {"id": "abcd-1234", "columns": descriptors, **view}}, "data": rows}


def test_socrata_rows_get_their_names_without_hidden_columns():
    hidden = [
        ":sid",
        ":id",
        ":position",
        ":created_at",
        ":created_meta",
        ":updated_at",
        ":updated_meta",
        ":meta",
    ]
    rows = [[f"row-{i}", f"id-{i}", i, 1, None, 2, None, "{ }", f"name {i}", i * 2.5] for i in range(3)]
    found = find_records(socrata([*hidden, "name", "amount"], rows), None, source="http://x/rows.json")
    assert found.records == [{"name": f"name {i}", "amount": i * 2.5} for i in range(3)]
    assert found.path == "data"
    assert "'meta.view.columns'" in found.shape and "Socrata rows.json" in found.shape
    assert "8 hidden ':' columns dropped" in found.shape and "3 rows × 2 fields" in found.shape
    assert "'meta.view.columns' (the column list of 'data', not data)" in found.others


def test_a_column_list_larger_than_the_data_is_never_the_data():
    names = [f"c{i}" for i in range(30)]
    payload = socrata(names, [list(range(30)), list(range(30, 60))])
    found = find_records(payload, None, source="s")
    assert found.path == "data" and len(found.records) == 2 and list(found.records[1]) == names
    assert found.records[1]["c29"] == 59


def test_records_path_at_the_arrays_finds_the_column_list_beside_them():
    payload = socrata([":id", "a", "b"], [["x", 1, 2], ["y", 3, 4]])
    found = find_records(payload, "data", source="s")
    assert found.records == [{"a": 1, "b": 2}, {"a": 3, "b": 4}] and "source.records_path" in found.shape


@pytest.mark.parametrize(
    "columns",
    [
        ["a", "b", "c"],
        [{"name": "a", "type": "Int"}, {"name": "b", "type": "Float"}, {"name": "c", "type": "String"}],
    ],
)
def test_columns_and_data_square(columns):
    """Three columns and three rows: the equal lengths must not read as a column layout."""
    payload = {"columns": columns, "data": [[1, 2.0, "x"], [3, 4.0, "y"], [5, 6.0, "z"]]}
    found = find_records(payload, None, source="s")
    assert found.records == [
        {"a": 1, "b": 2.0, "c": "x"},
        {"a": 3, "b": 4.0, "c": "y"},
        {"a": 5, "b": 6.0, "c": "z"},
    ]
    assert "from 'columns' (columns + data)" in found.shape


def test_header_row_with_typed_values():
    payload = [["city", "pop", "area"], ["A", 10, 1.5], ["B", 20, 2.5]]
    found = find_records(payload, None, source="s")
    assert found.records == [{"city": "A", "pop": 10, "area": 1.5}, {"city": "B", "pop": 20, "area": 2.5}]
    assert "from its header row" in found.shape and "2 rows × 3 fields" in found.shape


def test_header_row_of_an_all_text_api():
    """Census-style: every value is text, the header's names never occur again in their column."""
    payload = [["NAME", "B01001_001E", "state"], ["Alabama", "4903185", "01"], ["Alaska", "731545", "02"]]
    found = find_records(payload, None, source="s")
    assert found.records[0] == {"NAME": "Alabama", "B01001_001E": "4903185", "state": "01"}


def test_text_rows_whose_first_row_repeats_are_not_a_header():
    payload = {"pairs": [["x", "y"], ["x", "z"], ["x", "w"]]}
    found = find_records(payload, None, source="s")
    assert found.records == [{"0": "x", "1": "y"}, {"0": "x", "1": "z"}, {"0": "x", "1": "w"}]
    assert "named by position" in found.shape


def test_repeated_column_names_follow_the_flattening_collision_rule():
    stats = FlattenStats()
    flattened = flatten_record({"a.b": 1, "a": {"b": 2}}, max_depth=5, stats=stats)
    assert list(flattened) == ["a.b", "a.b__dup1"]
    found = find_records({"columns": ["a", "b", "a", "a"], "data": [[1, 2, 3, 4]]}, None, source="s")
    assert found.records == [{"a": 1, "b": 2, "a__dup1": 3, "a__dup2": 4}]
    assert found.collisions == {"a": "a__dup1"}
    assert unique_names(["a.b", "a.b"]) == (list(flattened), stats.collisions)


def test_most_rows_times_fields_wins():
    payload = {
        "ids": [{"id": i} for i in range(10)],
        "items": [{"id": i, "x": 1, "y": 2, "z": {"p": 1, "q": 2}} for i in range(5)],
    }
    found = find_records(payload, None, source="s")
    assert found.path == "items" and "5 rows × 5 fields" in found.shape
    assert found.others == ["'ids' (objects) 10 × 1"]


def test_column_layout_against_a_list_of_objects():
    payload = {"hourly": {"t": list(range(48)), "v": [1.0] * 48}, "alerts": [{"a": 1, "b": 2}] * 3}
    found = find_records(payload, None, source="s")
    assert (
        found.path == "hourly"
        and len(found.records) == 48
        and "column layout (2 parallel arrays)" in found.shape
    )


@pytest.mark.parametrize(
    ("rows", "index", "got"),
    [
        ([["r0", 1, 2], ["r1", 3], ["r2", 5, 6]], 1, "has 2 values"),
        ([["r0", 1, 2], ["r1", 3, 4], ["r2", 5, 6, 7]], 2, "has 4 values"),
        ([["r0", 1, 2], None], 1, "is a NoneType, not an array"),
    ],
)
def test_a_row_of_the_wrong_length_names_its_index(rows, index, got):
    payload = socrata([":id", "a", "b"], rows)
    for records_path in (None, "data"):
        with pytest.raises(IngestionError) as info:
            find_records(payload, records_path, source="http://api.test/rows.json")
        message = str(info.value)
        assert f"row {index} of 'data'" in message and got in message
        assert "'meta.view.columns' has 3 columns" in message and "http://api.test/rows.json" in message


def test_a_short_row_after_a_header_counts_the_header():
    with pytest.raises(
        IngestionError, match=r"row 2 of '<root>' \(the header row is item 0\).* has 1 values"
    ):
        find_records([["a", "b"], [1, 2], [3]], None, source="s")


def test_list_of_objects_and_geojson_are_described():
    features = [{"type": "Feature", "properties": {"mag": 1.0}, "geometry": None, "id": "a"}]
    found = find_records({"type": "FeatureCollection", "features": features}, None, source="s")
    assert found.path == "features" and "GeoJSON FeatureCollection" in found.shape
    found = find_records([{"a": 1}], None, source="s")
    assert (
        found.shape == "'<root>' as a list of objects, 1 rows × 1 fields (the response is a list of objects)"
    )


@pytest.mark.parametrize(
    ("body", "cursor", "warned"),
    [
        ({"next_cursor": "abc"}, "abc", None),
        ({"next_cursor": 40}, "40", None),
        ({"other": 1}, None, None),
        ({"next_cursor": None}, None, None),
        ({"next_cursor": ""}, None, "the cursor '' at 'next_cursor' of page 3 is empty"),
        ({"next_cursor": "seen"}, None, "the cursor 'seen' at 'next_cursor' of page 3 was already sent"),
        ({"next_cursor": {"a": 1}}, None, "is a dict, not a text or number"),
    ],
)
def test_next_cursor(body, cursor, warned, caplog):
    notes = PagingNotes()
    with caplog.at_level(logging.WARNING, logger="anomaly_detection.ingest.pagination"):
        assert next_cursor(body, "next_cursor", 3, {"seen"}, notes) == cursor
    if warned is None:
        assert notes.warnings == [] and not caplog.records
    else:
        assert len(notes.warnings) == 1 and warned in notes.warnings[0]
        assert [r.getMessage() for r in caplog.records] == notes.warnings


def test_next_cursor_at_a_dotted_path():
    assert next_cursor({"paging": {"after": "Q2"}}, "paging.after", 1, set(), PagingNotes()) == "Q2"


def test_a_meta_list_of_column_descriptors_beside_the_data():
    """ClickHouse's JSONCompact: the ``meta`` list names the columns and is not itself a candidate."""
    payload = {
        "meta": [{"name": "k", "type": "String"}, {"name": "v", "type": "UInt8"}],
        "data": [["a", 1]],
        "rows": 1,
    }
    found = find_records(payload, None, source="s")
    assert found.records == [{"k": "a", "v": 1}] and "from 'meta' (columns + data)" in found.shape
    assert found.others == ["'meta' (the column list of 'data', not data)"]
