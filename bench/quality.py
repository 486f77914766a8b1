"""Detection quality on labelled datasets: the project's own selection against a default Isolation Forest.

For every ``*.npz`` (arrays ``X`` and ``y``, 1 = anomaly) in the folders given (default:
``../shared/data/adbench``), the native pipeline's own stages run on the data written as an
ingested table with a label column: preprocess (duplicates, scaling, imputation) -> detect (every
configured algorithm over its grid; the default config) -> select (``--selection``, default
the project's default ``ensemble``; ``--selection metric`` picks by ``--metric``). The label column is never
a feature; it only scores the outcome. Printed per dataset:

* the selected configuration and its ROC-AUC and PR-AUC (average precision) of the scores;
* a default scikit-learn ``IsolationForest(random_state=seed)`` on the same scaled features;
* the oracle: the best ROC-AUC of any single configuration in the grid (what a perfect selector gets);
* the seconds the pipeline took.

Datasets above ``--max-rows`` are subsampled uniformly (stated in the output). No tuning per
dataset: one config for all.

    .venv/bin/python bench/quality.py                          # ../shared/data/adbench
    .venv/bin/python bench/quality.py path/to/more/npz/folders --hyperparameters complex
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "adbench"
LABEL = "is_anomaly"


def load(path: Path, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    data = np.load(path, allow_pickle=False)
    X, y = np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(int).ravel()
    if len(X) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))
        return X[keep], y[keep], True
    return X, y, False


def run_dataset(
    path: Path, workdir: Path, *, max_rows: int, seed: int, hyperparameters: str, metric: str, selection: str
) -> dict:
    from anomaly_detection.config import build_config
    from anomaly_detection.pipeline.stages import detect_stage, preprocess_stage, select_stage
    from anomaly_detection.runs import RunPaths, run_logging

    X, y, sampled = load(path, max_rows, seed)
    config = build_config(
        {
            "name": path.stem,
            "evaluation.label_column": LABEL,
            "evaluation.metric": metric,
            "modeling.hyperparameters": hyperparameters,
            "modeling.random_state": seed,
            "evaluation.selection": selection,
            "output.runs_dir": str(workdir / "runs"),
            "output.reports_dir": str(workdir / "reports"),
        }
    )
    paths = RunPaths.create(config.output.runs_dir, config.output.reports_dir, path.stem)
    table = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    table[LABEL] = y
    table.to_parquet(paths.flattened, index=False)
    started = time.perf_counter()
    with run_logging(paths):
        preprocess_stage(config, paths)
        for algorithm in config.modeling.algorithms:
            detect_stage(config, paths, algorithm)
        select_stage(config, paths)
    seconds = time.perf_counter() - started
    results = json.loads(paths.results.read_text())
    best = results["best"]
    models = results["models"]
    oracle = max(models, key=lambda m: m.get("roc_auc") if m.get("roc_auc") is not None else -1)

    features = pd.read_parquet(paths.features).to_numpy()
    labels = np.load(paths.labels)
    forest = IsolationForest(random_state=seed).fit(features)
    default_scores = -forest.score_samples(features)
    return {
        "dataset": path.stem,
        "rows": len(labels),
        "features": features.shape[1],
        "rate": float(labels.mean()),
        "sampled": sampled,
        "selected": f"{best['algorithm']} {best['params']}",
        "roc": best.get("roc_auc"),
        "pr": best.get("pr_auc"),
        "if_roc": float(roc_auc_score(labels, default_scores)),
        "if_pr": float(average_precision_score(labels, default_scores)),
        "oracle": oracle.get("roc_auc"),
        "oracle_model": f"{oracle['algorithm']} {oracle['params']}",
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folders", nargs="*", type=Path, help=f"folders of .npz files (default {DEFAULT_FOLDER})"
    )
    parser.add_argument(
        "--max-rows", type=int, default=20_000, help="rows kept per dataset (uniform subsample above)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hyperparameters", choices=["simple", "complex"], default="simple")
    parser.add_argument("--metric", default="silhouette", help="evaluation.metric")
    parser.add_argument(
        "--selection",
        choices=["metric", "ensemble"],
        default="ensemble",
        help="evaluation.selection (default: the project's default)",
    )
    args = parser.parse_args()
    folders = args.folders or [DEFAULT_FOLDER]
    files = sorted(f for folder in folders for f in Path(folder).glob("*.npz"))
    if not files:
        print(f"no .npz datasets in {', '.join(map(str, folders))}", file=sys.stderr)
        return 2
    print(
        f"selection: {args.selection} (metric {args.metric}); grids: {args.hyperparameters}; row cap {args.max_rows:,} (uniform subsample above); seed {args.seed}"
    )
    header = f"{'dataset':<16} {'rows':>7} {'feat':>5} {'rate':>6}  {'selected':<44} {'ROC':>6} {'PR':>6}  {'IF ROC':>6} {'IF PR':>6}  {'oracle':>6}  {'s':>6}"
    print(header)
    print("-" * len(header))
    rows = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for path in files:
            r = run_dataset(
                path,
                Path(tmp),
                max_rows=args.max_rows,
                seed=args.seed,
                hyperparameters=args.hyperparameters,
                metric=args.metric,
                selection=args.selection,
            )
            rows.append(r)
            print(
                f"{r['dataset'][:16]:<16} {r['rows']:>7,} {r['features']:>5} {r['rate']:>6.1%}  {r['selected'][:44]:<44} "
                f"{r['roc']:>6.3f} {r['pr']:>6.3f}  {r['if_roc']:>6.3f} {r['if_pr']:>6.3f}  {r['oracle']:>6.3f}  {r['seconds']:>6.1f}"
                + ("  (subsampled)" if r["sampled"] else ""),
                flush=True,
            )
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    print("-" * len(header))
    print(
        f"{'mean':<16} {'':>7} {'':>5} {'':>6}  {'':<44} {mean('roc'):>6.3f} {mean('pr'):>6.3f}  "
        f"{mean('if_roc'):>6.3f} {mean('if_pr'):>6.3f}  {mean('oracle'):>6.3f}  {sum(r['seconds'] for r in rows):>6.1f}"
    )
    wins = sum(r["roc"] >= r["if_roc"] for r in rows)
    print(
        f"selected >= default IF (ROC-AUC) on {wins} of {len(rows)} datasets; total {time.perf_counter() - total:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
