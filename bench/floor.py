"""The least work a run needs, as one process: parse the raw pages a run saved, flatten the
records, fit one Isolation Forest and one KMeans and score every row. `bench/native_scale.py`
runs it on the same pages as each CLI run and reports the CLI's wall time as a multiple of it.

    .venv/bin/python bench/floor.py RUN_DIR/raw [--records-path data]

Prints one JSON line: rows, numeric columns, and the seconds of each step (imports included in
``wall_s``, measured by the caller).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("raw", type=Path, help="a run's raw/ directory (page-*.json)")
    parser.add_argument("--records-path", default="data", help="key of the records in each page")
    args = parser.parse_args()
    steps = {"imports_s": time.perf_counter() - STARTED}
    clock = time.perf_counter()
    records: list = []
    for page in sorted(args.raw.glob("page-*.json")):
        body = json.loads(page.read_bytes())
        records.extend(body[args.records_path] if args.records_path else body)
    steps["parse_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    frame = pd.json_normalize(records)
    numeric = frame.select_dtypes("number")
    X = numeric.fillna(numeric.median()).to_numpy(dtype=np.float64)
    steps["flatten_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    forest = -IsolationForest(random_state=0, n_jobs=-1).fit(X).score_samples(X)
    steps["isolation_forest_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    distances = KMeans(n_clusters=8, random_state=0).fit(X).transform(X).min(axis=1)
    steps["kmeans_s"] = time.perf_counter() - clock
    assert len(forest) == len(distances) == len(records)
    print(
        json.dumps(
            {"rows": len(records), "columns": X.shape[1], **{k: round(v, 3) for k, v in steps.items()}}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
