"""Pure, in-memory tests of anomaly_detection.ingest.flatten: parsing, finding records, flattening, typing."""

from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pytest

from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.flatten import (
    INTEGER_TEXT,
    NUMERIC_TEXT,
    FlattenStats,
    finalize_frame,
    flatten_record,
    flatten_records,
    json_text,
)
from anomaly_detection.ingest.parse import parse_json
from anomaly_detection.ingest.records import extract_records


def table(records, *, max_depth=32, max_list_length=10):
    stats = FlattenStats()
    frame = flatten_records(records, max_depth=max_depth, stats=stats)
    frame, notes = finalize_frame(frame, max_list_length=max_list_length)
    return frame, stats, notes


def nested(depth: int, leaf=1, key="k"):
    """{"k": {"k": ... leaf}} built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


def depth_of(value) -> int:
    depth = 0
    while isinstance(value, dict):
        (value,) = value.values()
        depth += 1
    return depth


# --------------------------------------------------------------------------- flattening


def test_nested_objects_become_dotted_columns():
    frame, stats, _ = table([{"id": 1, "user": {"name": "ann", "address": {"city": "Oslo"}}}])
    assert list(frame.columns) == ["id", "user.name", "user.address.city"]
    assert frame.loc[0, "user.address.city"] == "Oslo"
    assert not stats.collisions and not stats.truncated_paths


def test_flat_record_keeps_its_values():
    record = {"a": 1, "b": "x"}
    assert flatten_record(record, max_depth=5, stats=FlattenStats()) == {"a": 1, "b": "x"}


def test_short_fixed_scalar_lists_become_indexed_columns():
    records = [
        {"geometry": {"type": "Point", "coordinates": [-122.7, 38.7, 2.1]}},
        {"geometry": {"type": "Point", "coordinates": [-116.5, 33.9, 11.0]}},
    ]
    frame, _, notes = table(records)
    assert ["geometry.coordinates.0", "geometry.coordinates.1", "geometry.coordinates.2"] == [
        c for c in frame.columns if c.startswith("geometry.coordinates")
    ]
    assert "geometry.coordinates" not in frame.columns
    assert frame["geometry.coordinates.2"].tolist() == [2.1, 11.0]
    assert pd.api.types.is_float_dtype(frame["geometry.coordinates.0"])
    assert notes.expanded_lists == ["geometry.coordinates"]


def test_long_lists_become_json_text():
    frame, _, notes = table([{"v": list(range(20))}, {"v": list(range(20, 40))}], max_list_length=10)
    assert frame.loc[0, "v"] == json.dumps(list(range(20))).replace(" ", "")
    assert json.loads(frame.loc[1, "v"]) == list(range(20, 40))
    assert notes.json_lists == ["v"]


def test_ragged_lists_and_lists_of_objects_become_json_text():
    frame, _, notes = table([{"r": [1, 2], "o": [{"x": 1}]}, {"r": [1, 2, 3], "o": [{"x": 2}]}])
    assert json.loads(frame.loc[1, "r"]) == [1, 2, 3]
    assert json.loads(frame.loc[0, "o"]) == [{"x": 1}]
    assert set(notes.json_lists) == {"r", "o"}


def test_expanded_list_does_not_overwrite_an_existing_column():
    frame, _, notes = table([{"c": [1, 2], "c.0": 5}])
    assert frame.loc[0, "c.0"] == 5
    assert frame.loc[0, "c.0__dup1"] == 1
    assert frame.loc[0, "c.1"] == 2
    assert notes.renamed == {"c.0": "c.0__dup1"}


def test_numeric_strings_become_numbers():
    frame, _, notes = table([{"fare": "7.5", "n": "3", "code": "N"}, {"fare": "10", "n": " 4 ", "code": "Y"}])
    assert pd.api.types.is_numeric_dtype(frame["fare"]) and frame["fare"].tolist() == [7.5, 10.0]
    assert frame["n"].tolist() == [3, 4]
    assert not pd.api.types.is_numeric_dtype(frame["code"])
    assert set(notes.numeric_from_text) == {"fare", "n"}


def test_numeric_strings_with_blanks_become_numbers_with_missing_values():
    frame, _, _ = table([{"x": "1.5"}, {"x": ""}, {"x": None}, {"x": "2"}])
    assert pd.api.types.is_float_dtype(frame["x"])
    assert frame["x"].iloc[0] == 1.5 and frame["x"].isna().tolist() == [False, True, True, False]


def test_iso_timestamps_become_datetimes_in_their_own_zone():
    frame, _, notes = table(
        [
            {
                "t": "2019-01-01T00:46:40.000",
                "z": "2024-03-01T12:00:00Z",
                "d": "2024-03-01",
                "o": "2024-03-01T09:00-05:00",
            },
            {
                "t": "2019-01-01T01:00:00.000",
                "z": "2024-03-01T14:00:00+02:00",
                "d": "2024-03-02",
                "o": "2024-03-02T10:00-05:00",
            },
        ]
    )
    for name in ("t", "z", "d", "o"):
        assert pd.api.types.is_datetime64_any_dtype(frame[name]), name
    assert frame["t"].dt.tz is None and frame["d"].dt.tz is None  # naive local times are not labelled UTC
    assert frame.loc[0, "t"] == pd.Timestamp("2019-01-01T00:46:40")
    assert str(frame["z"].dt.tz) == "UTC"  # mixed offsets: converted to UTC
    assert frame.loc[1, "z"] == frame.loc[0, "z"]  # 14:00+02:00 is 12:00 UTC
    assert frame.loc[0, "o"].isoformat() == "2024-03-01T09:00:00-05:00"  # one shared offset is kept
    assert set(notes.datetimes) == {"t", "z", "d", "o"}


def test_text_that_is_not_a_timestamp_stays_text():
    frame, _, notes = table([{"s": "2019-01-01T00:00:00"}, {"s": "yesterday"}])
    assert not pd.api.types.is_datetime64_any_dtype(frame["s"])
    assert notes.datetimes == []


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_deep_nesting_flattens_without_recursion(depth):
    stats = FlattenStats()
    record = {"id": 7, "deep": nested(depth)}
    flat = flatten_record(record, max_depth=32, stats=stats)
    (deep_name,) = [name for name in flat if name.startswith("deep")]
    assert deep_name == "deep" + ".k" * 31  # 32 levels of keys, the rest kept as JSON text
    assert stats.truncated_paths == {deep_name}
    text = flat[deep_name]
    assert isinstance(text, str)
    assert text.startswith('{"k":{"k":') and text.endswith("1" + "}" * (depth - 31))
    assert text.count("{") == depth - 31
    frame, _, _ = table([record])
    assert frame.loc[0, "id"] == 7 and frame.loc[0, deep_name] == text


def test_json_text_of_very_deep_values_is_valid_json():
    value = nested(1_500, leaf=[1.5, None, True, 'é"'])
    text = json_text(value)
    parsed = parse_json(text.encode(), source="test")
    assert depth_of(parsed) == 1_500
    inner = parsed
    while isinstance(inner, dict):
        inner = inner["k"]
    assert inner == [1.5, None, True, 'é"']


def test_parse_json_handles_1000_levels():
    body = b'{"a":' * 1_000 + b"1" + b"}" * 1_000
    assert depth_of(parse_json(body, source="test")) == 1_000


def test_parse_json_handles_5000_levels_with_the_fallback():
    body = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    assert depth_of(parse_json(body, source="test")) == 5_000


def test_parse_json_refuses_absurd_nesting_with_a_clear_error():
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(IngestionError, match=r"http://x/deep is nested too deeply"):
        parse_json(body, source="http://x/deep")


def test_colliding_keys_are_both_kept_and_reported():
    stats = FlattenStats()
    flat = flatten_record({"a.b": 1, "a": {"b": 2}}, max_depth=32, stats=stats)
    assert flat == {"a.b": 1, "a.b__dup1": 2}
    assert stats.collisions == {"a.b": "a.b__dup1"}
    frame, stats, _ = table([{"a.b": 1, "a": {"b": 2}}, {"a.b": 3, "a": {"b": 4}}])
    assert frame["a.b"].tolist() == [1, 3] and frame["a.b__dup1"].tolist() == [2, 4]
    assert stats.collisions == {"a.b": "a.b__dup1"}


def test_triple_collision_gets_increasing_suffixes():
    stats = FlattenStats()
    flat = flatten_record({"a.b.c": 1, "a.b": {"c": 2}, "a": {"b.c": 3}}, max_depth=32, stats=stats)
    assert flat == {"a.b.c": 1, "a.b.c__dup1": 2, "a.b.c__dup2": 3}


def test_nan_and_infinity_literals_parse():
    body = b'[{"x": NaN, "y": Infinity, "z": -Infinity, "w": 1}]'
    records = parse_json(body, source="test")
    assert math.isnan(records[0]["x"]) and records[0]["y"] == math.inf and records[0]["z"] == -math.inf
    frame, _, _ = table(records)
    assert math.isnan(frame.loc[0, "x"]) and frame.loc[0, "y"] == math.inf and frame.loc[0, "z"] == -math.inf


def test_empty_object_becomes_none():
    flat = flatten_record({"a": {}, "b": {"c": {}}, "d": 1}, max_depth=32, stats=FlattenStats())
    assert flat == {"a": None, "b.c": None, "d": 1}


def test_scalar_records_become_a_value_column():
    frame, stats, _ = table([1, 2.5, "3"])
    assert list(frame.columns) == ["value"]
    assert frame["value"].tolist() == [1.0, 2.5, 3.0]
    assert stats.scalar_records == 3


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<!DOCTYPE html><html><body>Oops</body></html>", r"http://x/y is an HTML page"),
        (b"hello, world", r"http://x/y is not valid JSON .*starts with 'hello, world'"),
        (b"", r"http://x/y is not valid JSON"),
    ],
)
def test_parse_json_names_the_source_and_the_body_start(body, message):
    with pytest.raises(IngestionError, match=message):
        parse_json(body, source="http://x/y")


# --------------------------------------------------------------------------- records


def test_extract_top_level_list():
    payload = [{"a": 1}, {"a": 2}]
    assert extract_records(payload, None, source="s") == (payload, "<root>")


def test_extract_dotted_path():
    payload = {"data": {"items": [{"a": 1}, {"a": 2}], "total": 2}}
    records, path = extract_records(payload, "data.items", source="s")
    assert records == [{"a": 1}, {"a": 2}] and path == "data.items"


def test_extract_index_of_meta_data_pair():
    payload = [{"page": 1, "pages": 1}, [{"v": 1}, {"v": 2}, {"v": 3}]]
    records, path = extract_records(payload, "1", source="s")
    assert records == payload[1] and path == "1"


def test_auto_detect_meta_data_pair_picks_the_data():
    payload = [{"page": 1, "pages": 1}, [{"v": 1}, {"v": 2}, {"v": 3}]]
    records, path = extract_records(payload, None, source="s")
    assert records == payload[1] and path == "1"


def test_auto_detect_largest_list_of_objects():
    payload = {
        "meta": {"warnings": [{"w": 1}]},
        "result": {"rows": [{"a": i} for i in range(5)], "tags": ["x", "y", "z", "w", "v", "u"]},
    }
    records, path = extract_records(payload, None, source="s")
    assert path == "result.rows" and len(records) == 5


def test_auto_detect_does_not_zip_a_single_list_of_objects():
    payload = {"data": {"items": [{"a": 1}, {"a": 2}]}}
    records, path = extract_records(payload, None, source="s")
    assert path == "data.items" and records == [{"a": 1}, {"a": 2}]


def test_parallel_arrays_are_zipped_into_rows():
    payload = {
        "latitude": 45.75,
        "hourly_units": {"time": "iso8601", "t": "°C"},
        "hourly": {
            "time": ["2024-01-01T00:00", "2024-01-01T01:00", "2024-01-01T02:00"],
            "t": [1.5, None, 2.5],
        },
    }
    expected = [
        {"time": "2024-01-01T00:00", "t": 1.5},
        {"time": "2024-01-01T01:00", "t": None},
        {"time": "2024-01-01T02:00", "t": 2.5},
    ]
    assert extract_records(payload, "hourly", source="s") == (expected, "hourly")
    assert extract_records(payload, None, source="s") == (expected, "hourly")
    frame, _, _ = table(expected)
    assert pd.api.types.is_datetime64_any_dtype(frame["time"]) and frame["t"].isna().tolist() == [
        False,
        True,
        False,
    ]


def test_wrong_path_names_missing_key_available_keys_and_url():
    payload = {"data": {"items": [], "total": 0}, "meta": {}}
    with pytest.raises(IngestionError) as info:
        extract_records(payload, "data.records", source="http://api.test/v1/things")
    message = str(info.value)
    assert "'records'" in message and "items, total" in message and "http://api.test/v1/things" in message
    assert "at 'data'" in message


def test_wrong_index_names_the_list_length():
    with pytest.raises(IngestionError, match=r"'5' is not an index of the list at '<root>' \(length 2\)"):
        extract_records([{}, []], "5", source="s")


def test_path_through_a_scalar_is_explained():
    with pytest.raises(IngestionError, match=r"'count' is a int, not an object or list.*http://u"):
        extract_records({"count": 3}, "count.items", source="http://u")


def test_path_to_a_scalar_is_explained():
    with pytest.raises(IngestionError, match=r"points to a int, not a list of records"):
        extract_records({"count": 3}, "count", source="http://u")


def test_no_list_of_records_names_keys_and_url():
    with pytest.raises(IngestionError) as info:
        extract_records({"status": "ok", "count": 3}, None, source="http://api.test/stats")
    message = str(info.value)
    assert (
        "no list of records" in message and "status, count" in message and "http://api.test/stats" in message
    )
    assert "records_path" in message


def test_column_wise_flattening_matches_record_by_record():
    """flatten_records (column-wise, fast) and flatten_record (per record) agree on ragged nested data."""
    import random

    import pandas as pd

    from anomaly_detection.ingest.flatten import FlattenStats, flatten_record, flatten_records

    rnd = random.Random(3)

    def value(depth):
        kind = rnd.random()
        if depth < 4 and kind < 0.3:
            return {f"k{rnd.randint(0, 3)}": value(depth + 1) for _ in range(rnd.randint(1, 3))}
        if kind < 0.4:
            return None
        if kind < 0.5:
            return [rnd.random(), rnd.random()]
        if kind < 0.7:
            return rnd.choice(["a", "b", "2026-01-01T00:00:00Z"])
        return rnd.random()

    records = [{f"f{j}": value(0) for j in range(5) if rnd.random() < 0.9} | {"x.k0": 1} for _ in range(300)]
    for depth in (1, 2, 32):
        fast = flatten_records(records, max_depth=depth, stats=FlattenStats())
        slow = pd.DataFrame.from_records(
            [flatten_record(r, max_depth=depth, stats=FlattenStats()) for r in records]
        )
        slow = slow.loc[:, [c for c in slow.columns if slow[c].notna().any() or c in fast.columns]]
        assert set(fast.columns) == set(slow.columns), depth
        for column in fast.columns:
            a, b = fast[column], slow[column]
            assert a.isna().tolist() == b.isna().tolist(), (depth, column)
            assert [str(v) for v in a.dropna()] == [str(v) for v in b.dropna()], (depth, column)


# --------------------------------------------------------------------------- hostile input


@pytest.fixture
def from_records_calls(monkeypatch):
    """The widths of the frames ``DataFrame.from_records`` is asked to build."""
    widths: list[int] = []
    original = pd.DataFrame.from_records

    def spy(data, *args, **kwargs):
        frame = original(data, *args, **kwargs)
        widths.append(frame.shape[1])
        return frame

    monkeypatch.setattr(pd.DataFrame, "from_records", spy)
    return widths


def test_the_column_cap_refuses_wide_records_before_building_a_frame(from_records_calls):
    from anomaly_detection.ingest.flatten import TooManyColumns

    wide = [{"id": 1}, {f"k{i}": i for i in range(50)}]
    with pytest.raises(
        TooManyColumns,
        match=r"more than processing.max_columns=10 columns \(51 distinct keys at the top level\)",
    ):
        flatten_records(wide, max_depth=32, stats=FlattenStats(), max_columns=10)
    assert from_records_calls == []
    nested = [{"id": 1, "obj": {f"k{i}": i for i in range(50)}}]
    with pytest.raises(TooManyColumns, match=r"\(51 columns once 'obj' is flattened\)"):
        flatten_records(nested, max_depth=32, stats=FlattenStats(), max_columns=10)
    assert from_records_calls == [2]  # the top level only, never the 50-column object
    with pytest.raises(TooManyColumns, match="max_columns=10"):
        flatten_records(
            [1, {f"k{i}": i for i in range(50)}], max_depth=32, stats=FlattenStats(), max_columns=10
        )


def test_the_column_cap_allows_exactly_the_limit():
    records = [{"a": 1, "b": {"c": 2, "d": {"e": 3}}}, {"a": 2, "b": 5}]
    frame = flatten_records(records, max_depth=32, stats=FlattenStats(), max_columns=4)
    assert list(frame.columns) == ["a", "b", "b.c", "b.d.e"]  # "b" stays: it is a number in one record
    with pytest.raises(IngestionError, match="max_columns=3"):
        flatten_records(records, max_depth=32, stats=FlattenStats(), max_columns=3)
    assert list(flatten_records(records[:1], max_depth=32, stats=FlattenStats(), max_columns=3).columns) == [
        "a",
        "b.c",
        "b.d.e",
    ]


def test_invalid_utf8_is_read_with_replacement_characters_and_a_warning(caplog):
    body = b'[{"name": "caf\xe9", "n": 1}]'
    with caplog.at_level(logging.WARNING, logger="anomaly_detection"):
        assert parse_json(body, source="http://x/latin1") == [{"name": "caf\ufffd", "n": 1}]
    assert "http://x/latin1 is not valid utf-8 at byte 14" in caplog.text


def test_utf16_and_byte_order_marks_are_read():
    assert parse_json('[{"a": "é"}]'.encode("utf-16"), source="x") == [{"a": "é"}]
    assert parse_json(b'\xef\xbb\xbf[{"a": 1}]', source="x") == [{"a": 1}]


def test_body_not_json_tells_a_cut_off_body_from_a_deep_one():
    from anomaly_detection.ingest.parse import BodyNotJson

    with pytest.raises(BodyNotJson) as info:
        parse_json(b'{"items": [1, 2', source="http://x/cut")
    assert not info.value.deep and "line 1 column" in info.value.detail
    with pytest.raises(BodyNotJson) as info:
        parse_json(b"[" * 30_000 + b"]" * 30_000, source="http://x/deep")
    assert info.value.deep


NUMBER_TEXTS = [
    "1.50", "1e5", "1E+05", "+3", "-0", "00012", ".5", "5.", "+.5", "-.5e-3", "inf", "-Infinity", "iNf",
    "1e400", "9223372036854775808", "nan", "NaN", "+nan", "1_000", "0x1A", "1.5d", "1,5", "\u0661\u0662",
    "--1", "1 2", "1.5e", "e5", "1.2.3", "", "½", "infinit", "Infinityy",
]  # fmt: skip


@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_numeric_text_pattern_is_what_pandas_reads_as_a_number(text):
    """The Spark preprocessing checks text with NUMERIC_TEXT (and INTEGER_TEXT for int64 columns)
    where the native conversion calls pandas.to_numeric: both must accept the same stripped text."""
    number = pd.to_numeric(pd.Series([text], dtype=object), errors="coerce")
    assert bool(NUMERIC_TEXT.match(text)) == bool(number.notna().iloc[0])
    assert bool(INTEGER_TEXT.match(text)) == (number.dtype.kind in "iu")
