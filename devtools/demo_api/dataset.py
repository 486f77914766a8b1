"""The demo API's data: :class:`DemoDataset`, a pure, deterministic generator of sensor records with
planted anomalies (see the package docstring for the record shape)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The timestamp of id 0; record ``id`` is stamped ``EPOCH + id minutes``.
EPOCH = np.datetime64("2026-01-01T00:00:00", "s")


#: Sites (one per cluster, with some mixing) and their approximate coordinates.
SITES: tuple[tuple[str, float, float], ...] = (
    ("plant-north", 52.5200, 13.4050),
    ("plant-south", 48.1372, 11.5755),
    ("warehouse-east", 50.1109, 8.6821),
    ("lab-west", 53.5511, 9.9937),
)


#: The tag lists a record can carry (picked per record; lengths vary from one to three).
TAG_SETS: tuple[tuple[str, ...], ...] = (
    ("calibrated",),
    ("calibrated", "indoor"),
    ("calibrated", "outdoor"),
    ("indoor", "battery"),
    ("outdoor", "mains"),
    ("calibrated", "indoor", "v2"),
    ("outdoor", "battery", "v2"),
)


N_CLUSTERS = 4


MAX_FEATURES = 99


DEFAULT_LIMIT = 500


MAX_LIMIT = 10_000

_PRESENT, _NULL, _ABSENT = 0, 1, 2


_DECIMALS = 4


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_share(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 0.5:
        raise ValueError(f"{name} must be between 0 and 0.5, got {value}")
    return value


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _normal_metrics(rng: np.random.Generator, *, rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``rows`` points from correlated Gaussian clusters in standardised units.

    Returns
    -------
    tuple of numpy.ndarray
        The points, shape ``(rows, features)``, and each point's cluster, shape ``(rows,)``.
    """
    rank = min(3, features)
    centers = rng.normal(0.0, 3.0, size=(N_CLUSTERS, features))
    loadings = rng.normal(0.0, 0.6, size=(N_CLUSTERS, rank, features))
    weights = rng.dirichlet(np.full(N_CLUSTERS, 6.0))
    cluster = rng.choice(N_CLUSTERS, size=rows, p=weights).astype(np.int8)
    # Build the points grouped by cluster (contiguous blocks are cheap), then put them in row order.
    by_cluster = np.argsort(cluster, kind="stable")
    grouped = rng.standard_normal((rows, features))
    grouped *= 0.5
    latent = rng.standard_normal((rows, rank))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=N_CLUSTERS))])
    for k in range(N_CLUSTERS):
        block = slice(bounds[k], bounds[k + 1])
        grouped[block] += centers[k]
        grouped[block] += np.einsum("nr,rf->nf", latent[block], loadings[k])
    points = np.empty_like(grouped)
    points[by_cluster] = grouped
    del grouped
    return points, cluster


def _plant_anomalies(
    rng: np.random.Generator, points: np.ndarray, *, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Push ``count`` random rows of ``points`` (in place) 6-10 standard deviations away.

    Returns
    -------
    tuple of numpy.ndarray
        The sorted row indices of the planted anomalies, shape ``(count,)``, and which metrics
        each one was pushed on, shape ``(count, features)`` (bool).
    """
    rows, features = points.shape
    planted = np.sort(rng.choice(rows, size=count, replace=False))
    spread = points[: min(rows, 100_000)].std(axis=0) if rows > 1 else np.ones(features)
    spread = np.where(spread > 0, spread, 1.0)
    low = min(3, features)
    high = max(low, features // 2)
    n_hit = rng.integers(low, high + 1, size=(count, 1))
    # Each row hits its n_hit features of lowest random rank: a random subset of that size.
    rank = rng.random((count, features)).argsort(axis=1).argsort(axis=1)
    hit = rank < n_hit
    signs = rng.choice((-1.0, 1.0), size=(count, features))
    shift = np.where(hit, signs * rng.uniform(6.0, 10.0, size=(count, features)) * spread, 0.0)
    points[planted] += shift
    return planted, hit


def _missing_codes(
    rng: np.random.Generator, *, shape: tuple[int, int], share: float, planted: np.ndarray
) -> np.ndarray:
    """Mark about ``share`` of the cells as null or absent (half each); planted rows stay complete."""
    codes = np.zeros(shape, dtype=np.int8)
    if share <= 0:
        return codes
    hit = rng.random(shape, dtype=np.float32) < share
    absent = rng.random(shape, dtype=np.float32) < 0.5
    codes[hit] = _NULL
    codes[hit & absent] = _ABSENT
    codes[planted] = _PRESENT
    return codes


def _stream_order(rng: np.random.Generator, *, unique: int, sources: np.ndarray) -> np.ndarray:
    """Interleave duplicates of ``sources`` into ``0..unique-1``, each after its original.

    Returns
    -------
    numpy.ndarray
        For every served position, the index of the unique row it shows.
    """
    # Unique row i sorts at key 2*i; a copy of row s goes after some unique row j >= s (key 2*j+1).
    after = sources + np.floor(rng.random(sources.size) * (unique - sources)).astype(np.int64)
    keys = np.concatenate([2 * np.arange(unique, dtype=np.int64), 2 * after + 1])
    rows = np.concatenate([np.arange(unique, dtype=np.int64), sources.astype(np.int64)])
    return rows[np.argsort(keys, kind="stable")]


def _scale_to_units(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Give each metric its own realistic offset and scale, rounded to a few decimals (in place)."""
    features = points.shape[1]
    points *= rng.uniform(0.5, 25.0, size=features)
    points += rng.uniform(-20.0, 500.0, size=features)
    return np.round(points, _DECIMALS, out=points)


@dataclass(frozen=True)
class DemoDataset:
    """Synthetic sensor records with planted anomalies, missing values and duplicates.

    Build one with :meth:`generate`; the columns are read-only numpy arrays indexed by unique row,
    and ``order`` maps each served position to its unique row (duplicates repeat a row).

    Attributes
    ----------
    rows : int
        Records served, duplicates included.
    features : int
        Metrics per record, named ``m01`` .. ``mNN``.
    seed : int
        The seed the data was generated from.
    """

    rows: int
    features: int
    seed: int
    anomaly_share: float
    missing_share: float
    duplicate_share: float
    metrics: np.ndarray = field(repr=False, compare=False)
    missing: np.ndarray = field(repr=False, compare=False)
    site: np.ndarray = field(repr=False, compare=False)
    lat: np.ndarray = field(repr=False, compare=False)
    lon: np.ndarray = field(repr=False, compare=False)
    tags: np.ndarray = field(repr=False, compare=False)
    order: np.ndarray = field(repr=False, compare=False)
    planted: np.ndarray = field(repr=False, compare=False)
    planted_hits: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def generate(
        cls,
        *,
        rows: int = 5000,
        features: int = 12,
        anomaly_share: float = 0.01,
        missing_share: float = 0.02,
        duplicate_share: float = 0.01,
        seed: int = 7,
    ) -> DemoDataset:
        """Generate a dataset; the same arguments always give the same records.

        Parameters
        ----------
        rows : int
            Records served in total, duplicates included (>= 1).
        features : int
            Metrics per record (1 to 99).
        anomaly_share : float
            Share of records that are planted anomalies (0 to 0.5).
        missing_share : float
            Share of the metric cells of normal records that are null or absent (0 to 0.5).
        duplicate_share : float
            Share of records that are exact copies of an earlier normal record (0 to 0.5).
        seed : int
            Non-negative random seed.

        Returns
        -------
        DemoDataset

        Raises
        ------
        ValueError
            If an argument is out of range or the shares leave no normal record to duplicate.
        """
        rows = _check_int("rows", rows, low=1)
        features = _check_int("features", features, low=1, high=MAX_FEATURES)
        seed = _check_int("seed", seed, low=0)
        anomaly_share = _check_share("anomaly_share", anomaly_share)
        missing_share = _check_share("missing_share", missing_share)
        duplicate_share = _check_share("duplicate_share", duplicate_share)

        n_dup = int(round(duplicate_share * rows))
        unique = rows - n_dup
        n_anom = int(round(anomaly_share * rows))
        if n_anom + n_dup > unique:
            raise ValueError(
                f"rows={rows} is too small for anomaly_share={anomaly_share} and duplicate_share={duplicate_share}: "
                "no normal record would be left to duplicate"
            )

        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
        points, cluster = _normal_metrics(streams[0], rows=unique, features=features)
        planted, hits = _plant_anomalies(streams[1], points, count=n_anom)
        codes = _missing_codes(streams[2], shape=points.shape, share=missing_share, planted=planted)
        site, lat, lon, tags = _sensor_columns(streams[3], cluster)
        normal = np.setdiff1d(np.arange(unique), planted, assume_unique=True)
        sources = (
            np.sort(streams[4].choice(normal, size=n_dup, replace=False)) if n_dup else np.empty(0, np.int64)
        )
        order = _stream_order(streams[4], unique=unique, sources=sources)
        metrics = _scale_to_units(streams[0], points)
        return cls(
            rows=rows,
            features=features,
            seed=seed,
            anomaly_share=anomaly_share,
            missing_share=missing_share,
            duplicate_share=duplicate_share,
            metrics=_readonly(metrics),
            missing=_readonly(codes),
            site=_readonly(site),
            lat=_readonly(lat),
            lon=_readonly(lon),
            tags=_readonly(tags),
            order=_readonly(order),
            planted=_readonly(planted),
            planted_hits=_readonly(hits),
        )

    @property
    def metric_names(self) -> list[str]:
        """The metric keys, ``m01`` .. ``mNN``."""
        return [f"m{i:02d}" for i in range(1, self.features + 1)]

    @property
    def planted_ids(self) -> list[int]:
        """The sorted ids of the planted anomalies (the ground truth)."""
        return (self.planted + 1).tolist()

    @property
    def planted_columns(self) -> dict[int, list[str]]:
        """For every planted id, the metrics it was pushed away on (the anomalous columns)."""
        names = self.metric_names
        return {
            int(i) + 1: [names[j] for j in np.flatnonzero(hit)]
            for i, hit in zip(self.planted.tolist(), self.planted_hits)
        }

    @property
    def metric_spread(self) -> np.ndarray:
        """Standard deviation of each metric (first 100,000 rows), the unit of :class:`Drift`."""
        spread = (
            self.metrics[: min(len(self.metrics), 100_000)].std(axis=0)
            if len(self.metrics) > 1
            else np.ones(self.features)
        )
        return np.where(spread > 0, spread, 1.0)

    @property
    def duplicate_count(self) -> int:
        """How many served records are copies of an earlier record."""
        return self.rows - self.metrics.shape[0]

    def records(
        self, start: int = 0, stop: int | None = None, *, shift: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """Build the JSON-ready records served at positions ``start`` .. ``stop - 1``.

        Parameters
        ----------
        start : int
            First position (>= 0).
        stop : int, optional
            One past the last position; clipped to :attr:`rows`. Defaults to the end.
        shift : numpy.ndarray, optional
            Added to every record's metrics, shape ``(features,)`` (see :class:`Drift`).

        Returns
        -------
        list of dict
            Fresh records (nothing shared between calls).
        """
        start = _check_int("start", start, low=0)
        stop = self.rows if stop is None else _check_int("stop", stop, low=0)
        index = self.order[min(start, self.rows) : min(stop, self.rows)]
        if index.size == 0:
            return []
        return _build_records(self, index, shift)


def _sensor_columns(rng: np.random.Generator, cluster: np.ndarray) -> tuple[np.ndarray, ...]:
    """Site (mostly its cluster's), jittered coordinates and a tag set for every row."""
    rows = cluster.size
    site = np.where(rng.random(rows) < 0.9, cluster % len(SITES), rng.integers(0, len(SITES), rows)).astype(
        np.int8
    )
    base = np.array([[lat, lon] for _, lat, lon in SITES])
    jitter = rng.normal(0.0, 0.01, size=(rows, 2))
    lat = np.round(base[site, 0] + jitter[:, 0], 5)
    lon = np.round(base[site, 1] + jitter[:, 1], 5)
    tags = rng.integers(0, len(TAG_SETS), rows).astype(np.int8)
    return site, lat, lon, tags


def _build_records(
    dataset: DemoDataset, index: np.ndarray, shift: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Turn unique-row ``index`` into record dicts from whole-column ``.tolist()`` conversions."""
    names = dataset.metric_names
    ids = (index + 1).tolist()
    stamps = np.datetime_as_string(
        EPOCH + (index + 1).astype("timedelta64[m]"), unit="s", timezone="UTC"
    ).tolist()
    sites = [SITES[s][0] for s in dataset.site[index].tolist()]
    lats = dataset.lat[index].tolist()
    lons = dataset.lon[index].tolist()
    tags = dataset.tags[index].tolist()
    values = dataset.metrics[index]
    values = (np.round(values + shift, _DECIMALS) if shift is not None and shift.any() else values).tolist()
    codes = dataset.missing[index]
    gappy = codes.any(axis=1)
    gaps = dict(zip(np.flatnonzero(gappy).tolist(), codes[gappy].tolist()))
    out = []
    for i, row_id in enumerate(ids):
        metrics = dict(zip(names, values[i]))
        if i in gaps:
            _apply_gaps(metrics, names, gaps[i])
        out.append(
            {
                "id": row_id,
                "timestamp": stamps[i],
                "sensor": {"site": sites[i], "location": {"lat": lats[i], "lon": lons[i]}},
                "metrics": metrics,
                "tags": list(TAG_SETS[tags[i]]),
                "status": "ok",
            }
        )
    return out


def _apply_gaps(metrics: dict[str, Any], names: list[str], codes: list[int]) -> None:
    for name, code in zip(names, codes):
        if code == _NULL:
            metrics[name] = None
        elif code == _ABSENT:
            del metrics[name]
