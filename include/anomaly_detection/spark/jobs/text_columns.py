"""Numeric and ISO date-time text typed as the native flattening types it, before Spark preprocessing.

Bulk ingestion leaves every string a string (``ingest/bulk.py``), while the native path's
``flatten.finalize_frame`` turns a text column whose values are all numeric text into numbers and
one of only ISO-8601 date-times into datetimes. :func:`convert_text_columns` takes the same
decision for every string column from whole-table Spark aggregates (one pass) and casts the columns
it converts, so that duplicates, the roles' sample, the plan and the feature expressions see the
native types:

* each value is stripped (the whitespace of Python's ``str.strip``); an empty value is missing;
  as natively, a value padded with other than ASCII whitespace (a no-break space ...), or a date
  followed by whitespace, passes the check but becomes missing (pandas parses the unstripped text);
* **numbers**: every present value matches ``flatten.NUMERIC_TEXT`` (what ``pandas.to_numeric``
  reads as a number) -> ``bigint`` when every value is an integer within int64 and none is missing
  (pandas gives int64 then), else ``double``;
* **date-times**: every present value matches ``flatten.ISO_TIMESTAMP`` and is a valid date-time
  -> ``timestamp_ntz`` at the text's wall-clock time when no value has a zone (naive datetimes,
  natively) or all share one offset (the native datetimes keep it, and ``derive.to_instants``
  reads them at their wall-clock time), else the instant as ``timestamp`` (naive values taken as
  UTC, as the native conversion to UTC does; the jobs' session time zone is UTC).

Spark keeps microseconds: digits of a second beyond six are cut (pandas keeps nanoseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection.ingest.flatten import INTEGER_TEXT, ISO_TIMESTAMP, NUMERIC_TEXT, TIME_ZONE

#: Leading and trailing whitespace as Python's ``str.strip`` sees it (Java's Unicode ``\s`` lacks
#: the four separators ``\x1c``-``\x1f``).
STRIP = r"(?U)^[\s\x1c-\x1f]+|[\s\x1c-\x1f]+$"
#: The whitespace pandas skips around a number or a date-time.
ASCII_STRIP = r"^[ \t\n\x0b\x0c\r]+|[ \t\n\x0b\x0c\r]+$"
#: A date without a time followed by whitespace, which pandas' ISO parser does not read.
PADDED_DATE = r"\d{4}-\d{2}-\d{2}[ \t\n\x0b\x0c\r]+$"
#: An hour and minute without seconds gets ``:00`` (Spark does not read ``00:46-05:00``; pandas does).
NO_SECONDS = r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2})(Z|[+-]\d{2}:?\d{2})?$"
#: Digits of a second beyond microseconds: pandas then gives nanosecond datetimes.
NANOSECOND_TEXT = r"\.\d{7,}"


@dataclass(frozen=True)
class Conversion:
    """How one string column is converted: ``kind`` is ``int``, ``float``, ``naive`` (no zone),
    ``offset`` (one shared offset, kept as wall-clock time) or ``utc`` (mixed zones, the instant);
    ``dtype`` is the pandas dtype the native flattening gives the column."""

    kind: str
    dtype: Any

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")


def _stripped(value: Any) -> Any:
    from pyspark.sql import functions as F

    return F.regexp_replace(value, STRIP, "")


def _readable(value: Any, text: Any) -> Any:
    """Whether pandas reads the unstripped ``value`` (only ASCII whitespace around ``text``)."""
    from pyspark.sql import functions as F

    return F.regexp_replace(value, ASCII_STRIP, "") == text


def _iso(text: Any) -> Any:
    from pyspark.sql import functions as F

    return F.regexp_replace(text, NO_SECONDS, "$1:00$2")


def _check_aggregates(c: str) -> list[Any]:
    """The aggregates that decide column ``c`` (see :func:`decide`), aliased ``<c>_<what>``."""
    from pyspark.sql import functions as F

    text = _stripped(F.col(c))
    present = text.isNotNull() & (text != F.lit(""))
    number = text.rlike(NUMERIC_TEXT.pattern) & text.try_cast("double").isNotNull()
    integer = text.rlike(INTEGER_TEXT.pattern) & text.try_cast("bigint").isNotNull()
    stamp = text.rlike(ISO_TIMESTAMP.pattern) & _iso(text).try_cast("timestamp").isNotNull()
    zoned = present & text.rlike(TIME_ZONE.pattern)
    offset = F.regexp_replace(F.regexp_extract(text, f"({TIME_ZONE.pattern})", 1), ":", "")
    offset = F.when(offset.isin("Z", "-0000"), F.lit("+0000")).otherwise(offset)
    parts = {
        "present": F.count(F.when(present, 1)),
        "missing": F.count(F.when(~present, 1)),
        "unreadable": F.count(F.when(present & ~_readable(F.col(c), text), 1)),
        "not_number": F.count(F.when(present & ~number, 1)),
        "not_integer": F.count(F.when(present & ~integer, 1)),
        "not_stamp": F.count(F.when(present & ~stamp, 1)),
        "zoned": F.count(F.when(zoned, 1)),
        "offsets": F.countDistinct(F.when(zoned, offset)),
        "nanoseconds": F.count(F.when(present & text.rlike(NANOSECOND_TEXT), 1)),
        "zoned_value": F.min(F.when(zoned, text)),
    }
    return [e.alias(f"{c}_{what}") for what, e in parts.items()]


def decide(facts: dict[str, Any]) -> Conversion | None:
    """The native decision for one column from its whole-table counts (keys as in
    :func:`_check_aggregates`, without the column prefix); None: it stays text."""
    present = facts["present"]
    if not present:
        return None
    if facts["not_number"] == 0:
        if facts["not_integer"] == 0 and facts["missing"] == 0 and facts["unreadable"] == 0:
            return Conversion("int", np.dtype("int64"))
        return Conversion("float", np.dtype("float64"))
    if facts["not_stamp"]:
        return None
    unit = "ns" if facts["nanoseconds"] else "us"
    if facts["zoned"] == 0:
        return Conversion("naive", np.dtype(f"datetime64[{unit}]"))
    if facts["zoned"] == present and facts["offsets"] == 1:
        zone = pd.to_datetime(facts["zoned_value"], format="ISO8601").tz
        return Conversion("offset", pd.DatetimeTZDtype(unit, zone))
    return Conversion("utc", pd.DatetimeTZDtype(unit, "UTC"))


def converted(c: str, conversion: Conversion) -> Any:
    """Column ``c`` converted (missing where empty)."""
    from pyspark.sql import functions as F

    text = _stripped(F.col(c))
    text = F.when((text != F.lit("")) & _readable(F.col(c), text), text)
    if conversion.numeric:
        return text.try_cast("bigint" if conversion.kind == "int" else "double")
    text = F.when(~F.col(c).rlike(PADDED_DATE), text)
    if conversion.kind == "utc":
        return _iso(text).try_cast("timestamp")
    wall_clock = F.regexp_replace(text, TIME_ZONE.pattern, "")
    return _iso(wall_clock).try_cast("timestamp_ntz")


def convert_text_columns(
    table: Any, col: dict[str, str], dtypes: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, Conversion]]:
    """Convert the string columns of ``table`` (columns ``col[name]``) the native flattening would.

    Returns the table with those columns cast, the pandas dtypes updated to the native ones, and
    each converted column's :class:`Conversion`.
    """
    from pyspark.sql.types import StringType

    texts = [n for n, c in col.items() if isinstance(table.schema[c].dataType, StringType)]
    if not texts:
        return table, dtypes, {}
    agg = table.agg(*(e for n in texts for e in _check_aggregates(col[n]))).first().asDict()
    conversions = {}
    for name in texts:
        prefix = f"{col[name]}_"
        decision = decide({k[len(prefix) :]: v for k, v in agg.items() if k.startswith(prefix)})
        if decision is not None:
            conversions[name] = decision
    if not conversions:
        return table, dtypes, {}
    table = table.withColumns({col[n]: converted(col[n], c) for n, c in conversions.items()})
    return table, {n: conversions[n].dtype if n in conversions else d for n, d in dtypes.items()}, conversions
