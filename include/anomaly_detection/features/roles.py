"""What each column of the API table is: its role, inferred from its type, name and values.

=============  ==========================================================  ===========================
role           recognised by                                               becomes
=============  ==========================================================  ===========================
measure        any other numeric column                                    a scaled magnitude
categorical    text with few distinct values; integer codes with a         a rarity feature (how rare
               code-like name (``*_type``, ``*code``, ``zip``, ``status``  the row's value is), never
               ...) or an id-like name with few distinct values            a magnitude
boolean        true/false, or exactly the two values 0 and 1               a 0/1 feature
timestamp      ISO date-time text, or epoch s / ms / us under a time-like  hour of day and day of week
               name (``time``, ``*_at``, ``updated``, ``pickup_datetime``)  (cyclic), and durations of
                                                                           paired timestamps
identifier     an id-like or code-like name with mostly distinct values,  nothing
               or integers stepping by a constant
text           other text                                                  nothing
ignored        the label column, ``_source``, excluded, all missing,      nothing
               constant
=============  ==========================================================  ===========================

``processing.column_roles`` overrides any inferred role. :func:`infer_roles` is the one definition
for both engines; the Spark job calls it on a bounded sample of the table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import pandas as pd

from anomaly_detection.config import ColumnRoleName, ProcessingConfig

ROLES = get_args(ColumnRoleName)
#: Roles that give features.
FEATURE_ROLES = frozenset({"measure", "categorical", "boolean", "timestamp"})

ID_NAME = re.compile(r"(^|[._\-\s])(id|uuid|guid|index|idx|key)$", re.I)
CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")
CODE_NAME = re.compile(
    r"(code|codes|_cd|type|kind|class|category|status|zip|zipcode|postal|postcode|vendor|vendorid|"
    r"flag|locationid|ratecodeid)$",
    re.I,
)
TIME_NAME = re.compile(
    r"(^|[._])(time|timestamp|datetime|date|ts|epoch)$|(_at|At|_time|_date|Time|Date|datetime|_ts)$"
    r"|updated|created|modified",
    re.I,
)
#: Epoch numbers in these ranges (1973 to 2100) are instants in seconds, ms or microseconds.
EPOCH_RANGES = (("s", 1e8, 4.2e9), ("ms", 1e11, 4.2e12), ("us", 1e14, 4.2e15))
#: At most this many distinct values, and at most this share of the rows, make a column categorical.
MAX_CATEGORIES = 500
MAX_CATEGORY_SHARE = 0.2
#: Integer codes under a code-like or id-like name may be up to half of the rows distinct.
MAX_CODE_SHARE = 0.5


@dataclass(frozen=True)
class ColumnRole:
    """One column's role and why (shown in the report and the data summary)."""

    role: str
    reason: str
    unit: str | None = None  # epoch unit ("s", "ms", "us") of a numeric timestamp

    @property
    def why_not_a_feature(self) -> str:
        """The data summary's reason for a column that gives no feature."""
        return self.reason if self.role == "ignored" else f"{self.role}: {self.reason}"


def epoch_unit(name: str, values: pd.Series) -> str | None:
    """``"s"``, ``"ms"`` or ``"us"`` when a numeric column under a time-like name holds epoch instants."""
    if not TIME_NAME.search(name):
        return None
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = numbers[np.isfinite(numbers)]
    if numbers.size == 0:
        return None
    for unit, low, high in EPOCH_RANGES:
        if numbers.min() >= low and numbers.max() <= high:
            return unit
    return None


def is_identifier_sequence(values: pd.Series) -> bool:
    """Integers stepping by one constant (a row counter): an identifier whatever its name."""
    if not pd.api.types.is_integer_dtype(values) or len(values) <= 20:
        return False
    diffs = np.diff(values.to_numpy())
    return bool(diffs.size) and bool((diffs == diffs[0]).all()) and diffs[0] != 0


def value_key(value: Any) -> str:
    """The key of a categorical value: integer-valued numbers without ``.0``; missing is ``""``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _distinct(values: pd.Series) -> int:
    try:
        return int(values.nunique(dropna=True))
    except TypeError:  # unhashable cells
        return int(values.astype(str).nunique(dropna=True))


def _integer_valued(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = numbers[np.isfinite(numbers)]
    return bool(numbers.size) and bool(np.all(numbers == np.round(numbers)))


def infer_role(name: str, values: pd.Series, *, first_occurrences: pd.Series | None = None) -> ColumnRole:
    """The role of one column from its dtype, name and values (see the module table).

    ``first_occurrences`` is the column without duplicate rows, used by the row-counter rule (an id
    whose record repeats still steps by a constant over the first occurrences).
    """
    present = values.dropna()
    if present.empty:
        return ColumnRole("ignored", "all values missing")
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values):
        return ColumnRole("timestamp", "date-time values")
    id_like = bool(ID_NAME.search(name) or CAMEL_ID.search(name))
    if pd.api.types.is_bool_dtype(values):
        if _distinct(present) > 1:
            return ColumnRole("boolean", "true/false values")
        return ColumnRole("ignored", "constant")
    if pd.api.types.is_numeric_dtype(values):  # the distinct count only where a name asks for it
        unit = epoch_unit(name, present)
        if unit:
            return ColumnRole("timestamp", f"epoch {unit} under a time-like name", unit=unit)
        numbers = present.to_numpy(dtype=np.float64)
        low, high = numbers.min(), numbers.max()
        if low == high:
            return ColumnRole("ignored", f"constant ({value_key(present.iloc[0])})")
        if low == 0 and high == 1 and bool(((numbers == 0) | (numbers == 1)).all()):
            return ColumnRole("boolean", "only the values 0 and 1")
        sequence = values if first_occurrences is None else first_occurrences
        if is_identifier_sequence(sequence):
            return ColumnRole("identifier", "integers stepping by a constant")
        if id_like or CODE_NAME.search(name):
            distinct = _distinct(present)
            codes = distinct <= MAX_CATEGORIES and distinct <= MAX_CODE_SHARE * len(present)
            kind = "id-like" if id_like else "code-like"
            if codes and _integer_valued(present):
                return ColumnRole("categorical", f"{kind} name with {distinct} distinct codes")
            return ColumnRole("identifier", f"{kind} name with {distinct} distinct values")
        return ColumnRole("measure", "numeric")
    distinct = _distinct(present)
    few = distinct <= MAX_CATEGORIES and distinct <= MAX_CATEGORY_SHARE * len(present)
    if distinct == 1:
        return ColumnRole("ignored", f"constant ({value_key(present.iloc[0])})")
    if few:
        return ColumnRole("categorical", f"text with {distinct} distinct values")
    if id_like or distinct == len(present):
        return ColumnRole("identifier", "distinct text per row" if not id_like else "id-like name")
    return ColumnRole("text", f"free text ({distinct} distinct values)")


def infer_roles(
    table: pd.DataFrame,
    processing: ProcessingConfig,
    *,
    ignored: Mapping[str, str] | None = None,
    repeats: np.ndarray | None = None,
) -> dict[str, ColumnRole]:
    """The role of every column of ``table``.

    Parameters
    ----------
    table : DataFrame of shape (n_rows, n_columns)
        The flattened API table (or a bounded sample of it).
    processing : ProcessingConfig
        ``column_roles`` (overrides), ``include_features`` and ``exclude_features``.
    ignored : mapping, optional
        Columns that are never features, with the reason (the label column, ``_source``).
    repeats : ndarray of shape (n_rows,), dtype bool, optional
        Duplicate rows, left out of the row-counter rule.

    Returns
    -------
    dict
        Column name -> :class:`ColumnRole`, in column order.
    """
    ignored = dict(ignored or {})
    roles: dict[str, ColumnRole] = {}
    for name in table.columns:
        name = str(name)
        column = table[name]
        if name in ignored:
            roles[name] = ColumnRole("ignored", ignored[name])
        elif name in processing.column_roles:
            role = processing.column_roles[name]
            unit = (
                epoch_unit("time", column)
                if role == "timestamp" and pd.api.types.is_numeric_dtype(column)
                else None
            )
            roles[name] = ColumnRole(role, "set in processing.column_roles", unit=unit)
        elif processing.include_features and name not in processing.include_features:
            roles[name] = ColumnRole("ignored", "not in include_features")
        elif name in processing.exclude_features:
            roles[name] = ColumnRole("ignored", "in exclude_features")
        else:
            role = infer_role(name, column, first_occurrences=None if repeats is None else column[~repeats])
            if (
                processing.include_features
                and role.role in ("identifier", "text")
                and pd.api.types.is_numeric_dtype(column)
            ):
                role = ColumnRole("measure", "in include_features")
            roles[name] = role
    return roles
