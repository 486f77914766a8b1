"""Cost of scoring every row with duplicates, and of the column roles, against the whole native run.

On 1M generated 12-metric rows (the demo API's generator, ~1% exact duplicate records, as
``bench/native_scale.py`` serves them), plus columns that need a role (a station code, an epoch-ms
``time``, a start/end pair of datetimes), it times, with the default config:

* the whole native preprocess + detect (every default algorithm over its grid; the distinct-row
  fitting included), and
* the duplicate handling alone: finding the duplicate rows of the table, the distinct-row mapping of
  the scaled matrix (once per algorithm, as each detect stage does) and the broadcast of each
  detection back to every row (scores through the inverse mapping, labels counting rows),
* the column roles alone: inferring every column's role, fitting the feature plan and computing the
  planned features (``select_features``, which the preprocessing runs once),

and prints them and their ratios (target: under 10 % together).

    .venv/bin/python bench/duplicates.py                  # 1M rows
    .venv/bin/python bench/duplicates.py --rows 100000
    .venv/bin/python bench/duplicates.py --algorithms isolation_forest,kmeans   # against a lighter run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include")]

from anomaly_detection.config import build_config  # noqa: E402
from anomaly_detection.detect.distinct import broadcast, distinct_rows  # noqa: E402
from anomaly_detection.detect.grid import DetectorSettings, run_grid  # noqa: E402
from anomaly_detection.features.preprocess import find_duplicate_rows, preprocess, select_features  # noqa: E402
from devtools.demo_api.dataset import DemoDataset  # noqa: E402


def generated_table(rows: int, features: int, seed: int) -> pd.DataFrame:
    """The demo API's records as a table: one row per served record (duplicates repeat a row).

    Returns
    -------
    DataFrame of shape (rows, features)
        Metrics ``m01`` .. with the dataset's missing cells as NaN.
    """
    data = DemoDataset.generate(rows=rows, features=features, seed=seed)
    values = np.array(data.metrics[data.order], dtype=np.float64)
    missing = np.asarray(data.missing)[data.order]
    values[missing != 0] = np.nan
    table = pd.DataFrame(values, columns=data.metric_names)
    rng = np.random.default_rng(seed)
    record = np.asarray(data.order)  # a duplicate row repeats its record's columns too
    n_records = int(record.max()) + 1
    table["station_code"] = rng.choice(40, n_records)[record]
    start = pd.Timestamp("2024-01-01") + pd.to_timedelta(record * 7, unit="s")
    table["time"] = start.asi8 // 10**6  # epoch ms
    table["start_time"] = start
    table["end_time"] = start + pd.to_timedelta(rng.gamma(2.0, 300.0, n_records)[record], unit="s")
    return table


def timed(what, *args, **kwargs):
    started = time.perf_counter()
    out = what(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--algorithms", help="comma-separated, instead of the default ones (e.g. isolation_forest,kmeans)"
    )
    args = parser.parse_args()

    overrides: dict = {"source": {"url": "http://127.0.0.1:1/bench"}, "processing": {"mode": "native"}}
    if args.algorithms:
        overrides["modeling"] = {"algorithms": args.algorithms.split(",")}
    config = build_config(overrides)
    table = generated_table(args.rows, args.features, args.seed)
    settings = DetectorSettings(
        contamination=config.modeling.contamination,
        random_state=config.modeling.random_state,
        fit_sample_size=config.modeling.fit_sample_size,
        dbscan_sample_size=config.modeling.dbscan_sample_size,
    )

    # the whole native preprocess + detect, as the pipeline runs it
    prepared, seconds_preprocess = timed(
        preprocess, table, config.processing, random_state=config.modeling.random_state
    )
    X = prepared.features
    seconds_detect: dict[str, float] = {}
    detections = []
    for algorithm in config.modeling.algorithms:
        found, seconds_detect[algorithm] = timed(
            list, run_grid(algorithm, config.modeling.grid_for(algorithm), X, settings)
        )
        detections += found
    whole = seconds_preprocess + sum(seconds_detect.values())

    # the duplicate handling alone, on the same data
    repeats, seconds_find = timed(find_duplicate_rows, table)
    (first, inverse), seconds_distinct = timed(distinct_rows, X)
    seconds_broadcast = 0.0
    for detection in detections:  # stand-in detections of distinct-row length
        distinct = type(detection)(**{**detection.__dict__, "scores": detection.scores[first]})
        _, seconds = timed(broadcast, distinct, inverse, settings.contamination, relabel=True)
        seconds_broadcast += seconds
    handling = seconds_find + len(config.modeling.algorithms) * seconds_distinct + seconds_broadcast
    (plan, roles, _, _), seconds_roles = timed(select_features, table, config.processing, repeats=repeats)

    print(
        f"rows {len(table):,} x {table.shape[1]} columns; {int(repeats.sum()):,} duplicate rows, {len(first):,} distinct feature rows"
    )
    print(
        f"native preprocess {seconds_preprocess:.2f} s; detect "
        + ", ".join(f"{a} {s:.2f} s" for a, s in seconds_detect.items())
    )
    print(f"whole native preprocess + detect ({', '.join(config.modeling.algorithms)}): {whole:.2f} s")
    print(
        f"duplicate handling: find duplicates {seconds_find:.2f} s + distinct mapping {seconds_distinct:.2f} s "
        f"x {len(config.modeling.algorithms)} algorithms + broadcast {seconds_broadcast:.2f} s "
        f"({len(detections)} detections) = {handling:.2f} s"
    )
    print(
        f"column roles: infer, plan and compute {len(plan.names)} features from {len(roles)} columns "
        f"({', '.join(f'{n}: {r.role}' for n, r in roles.items() if r.role != 'measure')}) = {seconds_roles:.2f} s"
    )
    print(
        f"ratio: duplicates {100 * handling / whole:.1f} %, roles {100 * seconds_roles / whole:.1f} %, "
        f"together {100 * (handling + seconds_roles) / whole:.1f} % of the whole (target < 10 %)"
    )


if __name__ == "__main__":
    main()
