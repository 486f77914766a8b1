"""Time context: each measure of a time-indexed table judged against its own series' recent history.

When the records have a time column (``time.column`` or detected) they form one series, or one per
value of ``time.series_key``. Within a series, in time order, each measure gets four views, each a
robust z-score of a residual:

* ``day``: the value against the centred rolling median over about a day (max(1 day, 12 steps));
* ``week``: the same over about a week (max(7 days, 84 steps));
* ``change``: the step from the previous point (none across a gap of more than 3 steps);
* ``shift``: the median of the next 12 steps against that of the previous 12 (a level shift).

Seasonality is detected by the autocorrelation of the week-detrended series at a lag of one day and
one week (at least 0.3, over at least 3 cycles). A seasonal series is first deseasonalised by its
robust profile: the median per hour of day, or per hour of day x day of week.

A row scores the largest of its four |z| only when it is *new*: its (deseasonalised) value leaves
the 1 %-99 % range its series took over the previous 7 days by more than 2 robust standard
deviations of the day residual. A pattern that recurred within the week (a nightly batch job, a
daily peak) is therefore not an anomaly; its first occurrence can be. The first day of a series has
no past week, so it is judged against the week after it. A judged row that is not new scores 0;
a row the time view cannot judge (no time, no value, no context) scores :data:`UNJUDGED`, -1.
A row is flagged by the ``time_series`` detector when its score
exceeds 6. These rules and numbers were chosen on all 40 NAB series at once (docs/QUALITY.md).

Irregular steps, gaps and repeated timestamps: windows are spans of time, not counts of rows, so
irregular steps need no resampling. A window holding fewer than a quarter of the points its span
should hold gives no baseline (that view is silent for the row). Rows sharing a timestamp are
judged together: one value per instant (their median), and every row of the instant gets its score.
Rows without a usable time, and series shorter than 2 days or 50 points, get no time context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DAY, WEEK = pd.Timedelta(days=1), pd.Timedelta(days=7)
MAD_TO_SD = 1.4826
VIEWS = ("day", "week", "change", "shift")
SEASONS = (None, "day", "week")
#: Windows span at least this many steps of the series.
MIN_STEPS = 12
#: A rolling window needs this share of the points its span should hold.
MIN_WINDOW_SHARE = 0.25
#: Seasonality needs this many whole cycles and this autocorrelation.
SEASON_CYCLES, SEASON_MIN_ACF = 3, 0.3
#: Width of a profile slot (at least the series' step).
SLOT = pd.Timedelta(minutes=60)
#: A change across a gap of more than this many steps is not measured.
MAX_GAP_STEPS = 3
#: Points on each side of a level shift.
SHIFT_STEPS = 12
#: z-scores are floored at this share of the value range (q01-q99): a noise-free series stays calm.
SCALE_FLOOR = 0.02
#: Novelty: the range of the previous NOVELTY_SPAN, its quantiles, the margin in robust SDs.
NOVELTY_SPAN, NOVELTY_QUANTILE, NOVELTY_MARGIN = WEEK, 0.99, 2.0
#: A series gets time context from this span and this many dated points.
MIN_SPAN, MIN_POINTS = pd.Timedelta(days=2), 50
#: The time_series detector flags a score above this.
FENCE = 6.0
#: Feature kinds the time view follows (measures) or that are time itself; with another kind among
#: the features (a duration, a category's rarity, a missing indicator) the value view's flags stand.
FOLLOWED_KINDS = frozenset({"measure", "hour", "weekday"})
#: The score of a row the time view cannot judge: no time, no value or no context.
UNJUDGED = -1.0


@dataclass
class SeriesFacts:
    """What was found about one series (for the summary and the report)."""

    name: str
    points: int
    step_seconds: float
    season: str | None  # "day", "week" or None
    acf_day: float | None
    acf_week: float | None
    repeated_times: int
    gaps: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class MeasureContext:
    """One measure's context over every row of the table (rows without context hold 0 / NaN)."""

    score: np.ndarray  # gated max |z| (0: not new; UNJUDGED: no history), shape (n_rows,)
    view: np.ndarray  # index in VIEWS of the largest |z|, int8, shape (n_rows,)
    typical: np.ndarray  # the value that view expected, shape (n_rows,)
    season: np.ndarray  # index in SEASONS of the series' seasonality, int8, shape (n_rows,)


@dataclass
class Context:
    """The time context of a table: the series layout and every measure's views."""

    column: str
    series_key: str | None
    series: np.ndarray  # series code per row, -1 without a usable time or context
    order: np.ndarray  # place in its series' time order, -1 likewise
    times: np.ndarray  # datetime64[ns] per row
    series_names: list[str]
    facts: list[SeriesFacts]
    measures: dict[str, MeasureContext] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # series name -> why it has no context

    @property
    def scores(self) -> np.ndarray:
        """Every measure's score as columns, shape (n_rows, n_measures)."""
        return np.column_stack([m.score for m in self.measures.values()])

    def summary(self) -> dict[str, Any]:
        seasons = sorted({f.season for f in self.facts if f.season})
        return {
            "column": self.column,
            "series_key": self.series_key,
            "series": len(self.facts),
            "measures": list(self.measures),
            "seasonality": seasons or None,
            "rows_with_context": int((self.series >= 0).sum()),
            "skipped_series": dict(list(self.skipped.items())[:20]),
            "skipped_series_count": len(self.skipped),
            "facts": [f.to_dict() for f in self.facts[:50]],
        }


def _robust_spread(r: np.ndarray, floor: float) -> float:
    ok = r[np.isfinite(r)]
    mad = MAD_TO_SD * float(np.median(np.abs(ok - np.median(ok)))) if ok.size else 0.0
    return max(mad, floor) or (1.2533 * float(np.mean(np.abs(ok - np.median(ok)))) if ok.size else 0.0) or 1.0


def _robust_z(r: np.ndarray, floor: float) -> np.ndarray:
    ok = np.isfinite(r)
    if not ok.any():
        return np.zeros_like(r)
    centre = float(np.median(r[ok]))
    return np.where(ok, (r - centre) / _robust_spread(r, floor), 0.0)


def _rolling_median(s: pd.Series, width: pd.Timedelta, step: pd.Timedelta) -> np.ndarray:
    need = max(3, int(MIN_WINDOW_SHARE * (width / step)))
    return s.rolling(width, center=True, min_periods=need).median().to_numpy()


def follows_every_feature(kinds: list[str]) -> bool:
    """Whether the time view follows every feature of these kinds (see :data:`FOLLOWED_KINDS`)."""
    return all(kind in FOLLOWED_KINDS for kind in kinds)


def autocorrelation(x: np.ndarray, lag: int) -> float | None:
    """Pearson correlation of ``x`` with itself ``lag`` points later (None when not measurable)."""
    if lag <= 0 or lag >= len(x) // 2:
        return None
    a, b = x[:-lag], x[lag:]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 10 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def series_views(
    instants: pd.DatetimeIndex, values: np.ndarray
) -> tuple[dict[str, np.ndarray], str | None, float | None, float | None]:
    """The views of one series with one value per instant (sorted, no repeats, no NaN).

    Returns
    -------
    views : dict
        ``score`` (gated max |z|), ``view`` (index in VIEWS), ``typical`` (what that view expected),
        each of shape ``(n_instants,)``.
    season : "day", "week" or None
    acf_day, acf_week : float or None
    """
    step = pd.Timedelta(int(np.median(np.diff(instants.asi8))), "ns")
    s = pd.Series(values, index=instants)
    w_day, w_week = max(DAY, MIN_STEPS * step), max(WEEK, 7 * MIN_STEPS * step)
    span = instants[-1] - instants[0]
    med_week = _rolling_median(s, w_week, step)
    detrended = values - np.where(np.isfinite(med_week), med_week, np.median(values))
    lag_day = int(round(DAY / step))
    acf_day = autocorrelation(detrended, lag_day) if lag_day >= 2 and span >= SEASON_CYCLES * DAY else None
    acf_week = (
        autocorrelation(detrended, 7 * lag_day) if lag_day >= 1 and span >= SEASON_CYCLES * WEEK else None
    )
    season = None
    if acf_week is not None and acf_week >= SEASON_MIN_ACF and (acf_day is None or acf_week > acf_day):
        season = "week"
    elif acf_day is not None and acf_day >= SEASON_MIN_ACF:
        season = "day"
    profile = np.zeros(len(values))
    if season is not None:
        slot_minutes = max(int(SLOT / pd.Timedelta(minutes=1)), int(step / pd.Timedelta(minutes=1)), 1)
        slot = ((instants.hour * 60 + instants.minute) // slot_minutes).to_numpy()
        if season == "week":
            slot = slot + (24 * 60 // slot_minutes + 1) * instants.dayofweek.to_numpy()
        profile = pd.Series(detrended).groupby(slot).transform("median").to_numpy()
    y = values - profile
    sy = pd.Series(y, index=instants)
    floor = SCALE_FLOOR * float(np.quantile(values, 0.99) - np.quantile(values, 0.01))

    base_day = _rolling_median(sy, w_day, step)
    base_week = _rolling_median(sy, w_week, step)
    gaps = np.r_[np.inf, np.diff(instants.asi8)] / max(step.value, 1)
    previous = np.r_[np.nan, y[:-1]]
    change = np.where(gaps <= MAX_GAP_STEPS, y - previous, np.nan)
    half = SHIFT_STEPS * step
    before = sy.rolling(half, min_periods=max(2, SHIFT_STEPS // 2)).median().to_numpy()
    before = np.r_[np.nan, before[:-1]]
    mirrored = pd.Series(
        y[::-1], index=pd.DatetimeIndex(instants.asi8[-1] - instants.asi8[::-1] + instants.asi8[0])
    )
    after = mirrored.rolling(half, min_periods=max(2, SHIFT_STEPS // 2)).median().to_numpy()[::-1]
    residuals = {"day": y - base_day, "week": y - base_week, "change": change, "shift": after - before}
    z = np.column_stack([np.abs(_robust_z(residuals[v], floor)) for v in VIEWS])
    expected = np.column_stack([base_day, base_week, previous, before]) + profile[:, None]

    w_new = max(NOVELTY_SPAN, 7 * MIN_STEPS * step)
    past = sy.rolling(w_new, closed="left", min_periods=1)
    high = past.quantile(NOVELTY_QUANTILE).to_numpy()
    low = past.quantile(1 - NOVELTY_QUANTILE).to_numpy()
    warmed = (instants.asi8 - instants.asi8[0]) >= (w_new / 7).value
    future = mirrored.rolling(w_new, closed="left", min_periods=1)
    high = np.where(warmed, high, future.quantile(NOVELTY_QUANTILE).to_numpy()[::-1])
    low = np.where(warmed, low, future.quantile(1 - NOVELTY_QUANTILE).to_numpy()[::-1])
    ahead = (instants.asi8[-1] - instants.asi8) >= (w_new / 7).value
    warmed = warmed | ahead
    beyond = np.where(warmed, np.maximum(np.maximum(y - high, low - y), 0.0), np.nan)
    novel = beyond / _robust_spread(residuals["day"], floor) > NOVELTY_MARGIN  # NaN compares False

    best = np.argmax(z, axis=1)
    score = np.where(warmed, np.where(novel, z[np.arange(len(y)), best], 0.0), UNJUDGED)
    typical = expected[np.arange(len(y)), best]
    return {"score": score, "view": best.astype(np.int8), "typical": typical}, season, acf_day, acf_week


def series_layout(
    times: pd.Series, keys: pd.Series | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[np.ndarray]]:
    """Series code and time order of every row, the series names, and each series' rows in time order.

    Rows without a time get code -1. Rows with the same time keep their table order.
    """
    n = len(times)
    stamps = times.to_numpy(dtype="datetime64[ns]")
    dated = ~np.isnat(stamps)
    if keys is None:
        codes, names = np.zeros(n, dtype=np.int64), ["all rows"]
    else:
        text = keys.astype("string").fillna("(missing)")
        codes, uniques = pd.factorize(text, sort=True)
        names = [str(u) for u in uniques]
    codes = np.where(dated, codes, -1)
    order = np.full(n, -1, dtype=np.int64)
    members: list[np.ndarray] = []
    sorter = np.lexsort((np.arange(n), stamps.astype(np.int64), codes))
    sorter = sorter[codes[sorter] >= 0]
    bounds = np.flatnonzero(np.diff(codes[sorter])) + 1
    for rows in np.split(sorter, bounds) if sorter.size else []:
        order[rows] = np.arange(len(rows))
        members.append(rows)
    return codes, order, names, members


def build_context(
    table: pd.DataFrame,
    *,
    time_column: str,
    times: pd.Series,
    measures: list[str],
    series_key: str | None = None,
) -> Context | None:
    """The time context of ``table``, or ``None`` when no series qualifies.

    Parameters
    ----------
    table : DataFrame of shape (n_rows, n_columns)
    time_column : str
    times : Series of shape (n_rows,)
        The parsed time of every row (NaT where unusable).
    measures : list of str
        The numeric columns judged in context.
    series_key : str, optional
        Column naming each series.
    """
    if series_key is not None and series_key not in table.columns:
        raise KeyError(
            f"time.series_key {series_key!r} is not a column; columns are: {', '.join(map(str, table.columns[:40]))}"
        )
    keys = table[series_key] if series_key else None
    codes, order, names, members = series_layout(times, keys)
    stamps = times.to_numpy(dtype="datetime64[ns]")
    n = len(table)
    numbers = {
        m: pd.to_numeric(table[m], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        for m in measures
    }
    measured = {
        m: MeasureContext(
            np.full(n, UNJUDGED), np.zeros(n, dtype=np.int8), np.full(n, np.nan), np.zeros(n, dtype=np.int8)
        )
        for m in measures
    }
    facts: list[SeriesFacts] = []
    skipped: dict[str, str] = {}
    usable = np.zeros(n, dtype=bool)
    for rows in members:
        name = names[int(codes[rows[0]])]
        instants_all = pd.DatetimeIndex(stamps[rows])
        span = instants_all[-1] - instants_all[0]
        if len(rows) < MIN_POINTS or span < MIN_SPAN:
            skipped[name] = (
                f"{len(rows)} points over {span}: needs {MIN_POINTS} points over {MIN_SPAN.days} days"
            )
            continue
        usable[rows] = True
        season_seen: tuple[str | None, float | None, float | None] = (None, None, None)
        for measure in measures:
            x = numbers[measure][rows]
            ok = np.isfinite(x)
            per_instant = pd.Series(x[ok]).groupby(stamps[rows][ok]).median()
            if len(per_instant) < MIN_POINTS:
                continue
            instants = pd.DatetimeIndex(per_instant.index)
            views, season, acf_day, acf_week = series_views(instants, per_instant.to_numpy())
            if measure == measures[0]:
                season_seen = (season, acf_day, acf_week)
            at = instants.get_indexer(stamps[rows][ok])
            target = rows[ok]
            own = x[ok] - per_instant.to_numpy()[at]  # a repeated instant: the row's own value
            mc = measured[measure]
            mc.score[target] = views["score"][at]
            mc.view[target] = views["view"][at]
            mc.typical[target] = views["typical"][at]
            mc.season[target] = SEASONS.index(season)
            if (own != 0).any():
                log.debug("%s: %d rows share a timestamp with another value", name, int((own != 0).sum()))
        repeated = len(rows) - len(np.unique(stamps[rows]))
        diffs = np.diff(np.unique(stamps[rows]).astype(np.int64))
        step = float(np.median(diffs)) if diffs.size else 0.0
        facts.append(
            SeriesFacts(
                name=name,
                points=len(rows),
                step_seconds=step / 1e9,
                season=season_seen[0],
                acf_day=season_seen[1],
                acf_week=season_seen[2],
                repeated_times=int(repeated),
                gaps=int((diffs > MAX_GAP_STEPS * step).sum()) if step else 0,
            )
        )
    if not facts:
        return None
    codes = np.where(usable, codes, -1)
    order = np.where(usable, order, -1)
    return Context(
        column=time_column,
        series_key=series_key,
        series=codes,
        order=order,
        times=stamps,
        series_names=names,
        facts=facts,
        measures=measured,
        skipped=skipped,
    )
