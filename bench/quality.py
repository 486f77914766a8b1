"""Detection quality on labelled datasets: the project's default against each single default detector.

For every ``*.npz`` (arrays ``X`` and ``y``, 1 = anomaly) in the folders given (default:
``../shared/data/adbench``), the native pipeline's own stages run on the data written as an
ingested table with a label column: preprocess (scaling, imputation; every row kept, duplicates
included) -> detect (every configured algorithm over its grid; the default config) -> select
(``--selection``, default the project's default ``ensemble``). The label column is never a
feature; it only scores the outcome. Printed per dataset and as means over the datasets:

* the pipeline's selected result (the scores and labels it wrote): ROC-AUC and PR-AUC (average
  precision) of its scores; the rows it flagged and their F1 at its own cut
  (``modeling.contamination``, ``auto`` by default); F1 of the top 5 % of rows (the fixed-share
  cut of the same scores); F1 when exactly as many rows are flagged as there are true anomalies
  (which needs the labels: a reference, not a rule); the pipeline's seconds;
* each single default detector plug-in on the same scaled matrix (``features.parquet`` of the run,
  fitted on distinct rows as the pipeline does): Isolation Forest (scikit-learn defaults), kNN
  (k = 5, the plug-in's 10,000-row reference), LOF (k = 20), ECOD, HBOS (10 bins): ROC-AUC and
  PR-AUC, and their seconds together;
* the means, the best single detector by mean ROC-AUC and by mean PR-AUC, and the targets, each
  computed as MET or NOT MET.

Datasets above ``--max-rows`` (default 20,000, the cap of the research that chose the default) are
subsampled with a seeded uniform draw (stated in the output). No tuning per dataset.

    .venv/bin/python bench/quality.py                          # ../shared/data/adbench
    .venv/bin/python bench/quality.py --max-rows 250000 --markdown /tmp/quality.md
    .venv/bin/python bench/quality.py path/to/more/npz/folders --hyperparameters complex
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score  # noqa: E402

DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "adbench"
LABEL = "is_anomaly"
#: The single default detectors: column name, plug-in, params.
SINGLES = (
    ("IF", "isolation_forest", {}),
    ("kNN", "knn", {"n_neighbors": 5}),
    ("LOF", "local_outlier_factor", {"n_neighbors": 20}),
    ("ECOD", "ecod", {}),
    ("HBOS", "hbos", {"n_bins": 10}),
)
#: The default's mean ROC-AUC must beat the best single detector's by this much.
ROC_MARGIN = 0.02
#: "Clearly above" the fixed 5 %: the auto cut's mean F1 must beat it by this much.
F1_MARGIN = 0.05
FIXED_SHARE = 0.05


def load(path: Path, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    data = np.load(path, allow_pickle=False)
    X, y = np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(int).ravel()
    if len(X) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))
        return X[keep], y[keep], True
    return X, y, False


@contextmanager
def written_scores():
    """Every score and label array the detect stage hands to ``scored.write_native``, by algorithm."""
    from anomaly_detection.detect import scored

    original, seen = scored.write_native, {}

    def keep(models_dir, algorithm, **kwargs):
        seen[algorithm] = (np.array(kwargs["scores"]), np.array(kwargs["labels"]))
        return original(models_dir, algorithm, **kwargs)

    scored.write_native = keep
    try:
        yield seen
    finally:
        scored.write_native = original


def top_count(scores: np.ndarray, k: int) -> np.ndarray:
    """Exactly ``k`` rows flagged: the highest scores (ties broken by row order)."""
    flagged = np.zeros(len(scores), dtype=np.int8)
    flagged[np.argsort(-scores, kind="stable")[:k]] = 1
    return flagged


def f1(y: np.ndarray, flagged: np.ndarray) -> float:
    return float(f1_score(y, flagged, zero_division=0))


def auc_pair(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    return float(roc_auc_score(y, scores)), float(average_precision_score(y, scores))


def run_dataset(path: Path, workdir: Path, args: argparse.Namespace) -> dict:
    import orjson

    from anomaly_detection.config import build_config
    from anomaly_detection.detect.grid import DetectorSettings, run_grid
    from anomaly_detection.detect.threshold import cut_scores
    from anomaly_detection.pipeline.stages import detect_stage, preprocess_stage, select_stage
    from anomaly_detection.runs import RunPaths, run_logging

    X, y, sampled = load(path, args.max_rows, args.seed)
    config = build_config(
        {
            "name": path.stem,
            "evaluation.label_column": LABEL,
            "evaluation.metric": args.metric,
            "evaluation.selection": args.selection,
            "modeling.hyperparameters": args.hyperparameters,
            "modeling.random_state": args.seed,
            "output.runs_dir": str(workdir / "runs"),
            "output.reports_dir": str(workdir / "reports"),
        }
    )
    paths = RunPaths.create(config.output.runs_dir, config.output.reports_dir, path.stem)
    table = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    table[LABEL] = y
    table.to_parquet(paths.flattened, index=False)
    started = time.perf_counter()
    with written_scores() as seen, run_logging(paths):
        preprocess_stage(config, paths)
        for algorithm in config.modeling.algorithms:
            detect_stage(config, paths, algorithm)
        select_stage(config, paths)
    seconds = time.perf_counter() - started
    best = orjson.loads(paths.results.read_bytes())["best"]
    scores, labels = seen[best["algorithm"]]
    features = pd.read_parquet(paths.features).to_numpy(dtype=np.float64)
    truth = np.load(paths.labels).astype(int)
    roc, pr = auc_pair(truth, scores)
    # the captured arrays are the ones the pipeline scored itself by
    assert math.isclose(roc, best["roc_auc"], abs_tol=1e-9), (roc, best["roc_auc"])
    assert int(labels.sum()) == best["anomaly_count"], (int(labels.sum()), best["anomaly_count"])
    fixed = cut_scores(scores, FIXED_SHARE, seed=config.modeling.random_state).labels
    r = {
        "dataset": path.stem,
        "rows": len(truth),
        "features": features.shape[1],
        "anomalies": int(truth.sum()),
        "sampled": sampled,
        "selected": f"{best['algorithm']} {best['params']}",
        "rule": (best.get("info") or {}).get("threshold_rule", ""),
        "roc": roc,
        "pr": pr,
        "flagged": int(labels.sum()),
        "f1_auto": f1(truth, labels),
        "f1_fixed": f1(truth, fixed),
        "f1_true": f1(truth, top_count(scores, int(truth.sum()))),
        "seconds": seconds,
    }
    settings = DetectorSettings(
        contamination=config.modeling.contamination,
        random_state=config.modeling.random_state,
        fit_sample_size=config.modeling.fit_sample_size,
        dbscan_sample_size=config.modeling.dbscan_sample_size,
    )
    started = time.perf_counter()
    for name, plugin, params in SINGLES:
        grid = {key: [value] for key, value in params.items()}
        (detection,) = run_grid(
            plugin, grid, features, settings, fit_on_distinct=config.processing.fit_on_distinct_rows
        )
        r[f"{name}_roc"], r[f"{name}_pr"] = auc_pair(truth, detection.scores)
    r["singles_seconds"] = time.perf_counter() - started
    return r


# ------------------------------------------------------------------ summary and targets

METRIC_KEYS = ["roc", "pr", "f1_auto", "f1_fixed", "f1_true"] + [
    f"{name}_{m}" for name, _, _ in SINGLES for m in ("roc", "pr")
]


def summarise(rows: list[dict]) -> dict:
    """Means, the best single default detectors and the targets (each with its verdict)."""
    mean = {key: float(np.mean([r[key] for r in rows])) for key in METRIC_KEYS}
    mean["flagged_share"] = float(np.mean([r["flagged"] / r["rows"] for r in rows]))
    mean["true_share"] = float(np.mean([r["anomalies"] / r["rows"] for r in rows]))
    names = [name for name, _, _ in SINGLES]
    best_roc = max(names, key=lambda n: mean[f"{n}_roc"])
    best_pr = max(names, key=lambda n: mean[f"{n}_pr"])
    targets = [
        (
            f"default mean ROC-AUC {mean['roc']:.3f} >= best single ({best_roc}) {mean[f'{best_roc}_roc']:.3f}"
            f" + {ROC_MARGIN} = {mean[f'{best_roc}_roc'] + ROC_MARGIN:.3f}",
            mean["roc"] >= mean[f"{best_roc}_roc"] + ROC_MARGIN,
        ),
        (
            f"default mean PR-AUC {mean['pr']:.3f} >= best single ({best_pr}) {mean[f'{best_pr}_pr']:.3f}",
            mean["pr"] >= mean[f"{best_pr}_pr"],
        ),
        (
            f"auto-cut mean F1 {mean['f1_auto']:.3f} >= mean F1 at the true count {mean['f1_true']:.3f}",
            mean["f1_auto"] >= mean["f1_true"],
        ),
        (
            f"auto-cut mean F1 {mean['f1_auto']:.3f} >= mean F1 at a fixed 5 % {mean['f1_fixed']:.3f}"
            f" + {F1_MARGIN} = {mean['f1_fixed'] + F1_MARGIN:.3f} (clearly above)",
            mean["f1_auto"] >= mean["f1_fixed"] + F1_MARGIN,
        ),
    ]
    wins = {
        "roc": sum(r["roc"] >= max(r[f"{n}_roc"] for n in names) for r in rows),
        "pr": sum(r["pr"] >= max(r[f"{n}_pr"] for n in names) for r in rows),
    }
    rules = {
        "upper group": 0,
        "raised to the floor": 0,
        "capped": 0,
        "no separate group": 0,
        "fixed share": 0,
    }
    for r in rows:
        rules[rule_kind(r["rule"])] += 1
    return {
        "mean": mean,
        "best_roc": best_roc,
        "best_pr": best_pr,
        "targets": targets,
        "wins": wins,
        "rules": rules,
    }


def rule_kind(rule: str) -> str:
    """Which branch of the cut (``info["threshold_rule"]``) labelled the rows."""
    for words, kind in (
        ("no separate", "no separate group"),
        ("raised to the floor", "raised to the floor"),
        ("capped", "capped"),
        ("fixed", "fixed share"),
    ):
        if words in rule:
            return kind
    return "upper group"


def summary_lines(summary: dict, n_sets: int, n_files: int, seconds: float, pipeline_s: float) -> list[str]:
    mean, lines = summary["mean"], []
    names = [name for name, _, _ in SINGLES]
    lines.append(
        f"means over {n_sets} set(s)"
        + (f" ({n_files - n_sets} of {n_files} failed: see above)" if n_sets < n_files else "")
    )
    lines.append(
        f"  default: ROC-AUC {mean['roc']:.3f}, PR-AUC {mean['pr']:.3f}; F1 auto {mean['f1_auto']:.3f}, "
        f"5 % {mean['f1_fixed']:.3f}, true count {mean['f1_true']:.3f}; "
        f"mean share flagged {mean['flagged_share']:.1%} (true {mean['true_share']:.1%})"
    )
    for name in names:
        lines.append(f"  {name:<5} ROC-AUC {mean[f'{name}_roc']:.3f}, PR-AUC {mean[f'{name}_pr']:.3f}")
    lines.append(
        f"  best single default by mean ROC-AUC: {summary['best_roc']}; by mean PR-AUC: {summary['best_pr']}"
    )
    lines.append(
        f"  default >= every single default on {summary['wins']['roc']} of {n_sets} sets (ROC-AUC), "
        f"{summary['wins']['pr']} of {n_sets} (PR-AUC)"
    )
    lines.append("  auto cut: " + ", ".join(f"{word} {count}" for word, count in summary["rules"].items()))
    lines.append("targets:")
    for text, met in summary["targets"]:
        lines.append(f"  {'MET' if met else 'NOT MET':<8} {text}")
    lines.append(f"total {seconds:.0f} s (pipeline {pipeline_s:.0f} s)")
    return lines


# ------------------------------------------------------------------ output


def console_header() -> str:
    singles = " ".join(f"{name + ' ROC':>8} {'PR':>5}" for name, _, _ in SINGLES)
    return (
        f"{'dataset':<18} {'rows':>7} {'rate':>6} | {'ROC':>5} {'PR':>5} {'flag':>6} {'F1auto':>6} "
        f"{'F1 5%':>6} {'F1true':>6} {'s':>6} | {singles} {'s':>6}"
    )


def console_line(r: dict) -> str:
    singles = " ".join(f"{r[f'{name}_roc']:>8.3f} {r[f'{name}_pr']:>5.3f}" for name, _, _ in SINGLES)
    return (
        f"{r['dataset'][:18]:<18} {r['rows']:>7,} {r['anomalies'] / r['rows']:>6.1%} | {r['roc']:>5.3f} "
        f"{r['pr']:>5.3f} {r['flagged']:>6,} {r['f1_auto']:>6.3f} {r['f1_fixed']:>6.3f} {r['f1_true']:>6.3f} "
        f"{r['seconds']:>6.1f} | {singles} {r['singles_seconds']:>6.1f}"
        + ("  (subsampled)" if r["sampled"] else "")
    )


def console_means(summary: dict, rows: list[dict]) -> str:
    m = summary["mean"]
    singles = " ".join(f"{m[f'{name}_roc']:>8.3f} {m[f'{name}_pr']:>5.3f}" for name, _, _ in SINGLES)
    return (
        f"{'mean':<18} {'':>7} {m['true_share']:>6.1%} | {m['roc']:>5.3f} {m['pr']:>5.3f} "
        f"{m['flagged_share']:>6.1%} {m['f1_auto']:>6.3f} {m['f1_fixed']:>6.3f} {m['f1_true']:>6.3f} "
        f"{sum(r['seconds'] for r in rows):>6.0f} | {singles} {sum(r['singles_seconds'] for r in rows):>6.0f}"
    )


def _bold_best(values: list[float]) -> list[str]:
    top = max(values)
    return [f"**{v:.3f}**" if v == top else f"{v:.3f}" for v in values]


def markdown(rows: list[dict], summary: dict, preamble: list[str], closing: list[str]) -> str:
    names = [name for name, _, _ in SINGLES]
    out = [*preamble, ""]
    out.append(
        "| dataset | rows | anomalies | default ROC / PR | flagged | F1 auto | F1 5 % | F1 true count | s | "
        + " | ".join(f"{n} ROC / PR" for n in names)
        + " | singles s |"
    )
    out.append("|---|---:|---:|---|---:|---:|---:|---:|---:|" + "---|" * len(names) + "---:|")
    for r in rows:
        rocs = _bold_best([r["roc"]] + [r[f"{n}_roc"] for n in names])
        prs = _bold_best([r["pr"]] + [r[f"{n}_pr"] for n in names])
        cells = [
            r["dataset"] + (" (subsampled)" if r["sampled"] else ""),
            f"{r['rows']:,}",
            f"{r['anomalies']:,} ({r['anomalies'] / r['rows']:.1%})",
            f"{rocs[0]} / {prs[0]}",
            f"{r['flagged']:,} ({r['flagged'] / r['rows']:.1%})",
            f"{r['f1_auto']:.3f}",
            f"{r['f1_fixed']:.3f}",
            f"{r['f1_true']:.3f}",
            f"{r['seconds']:.1f}",
            *(f"{roc} / {pr}" for roc, pr in zip(rocs[1:], prs[1:])),
            f"{r['singles_seconds']:.1f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    m = summary["mean"]
    rocs = _bold_best([m["roc"]] + [m[f"{n}_roc"] for n in names])
    prs = _bold_best([m["pr"]] + [m[f"{n}_pr"] for n in names])
    cells = [
        f"**mean of {len(rows)}**",
        "",
        f"({m['true_share']:.1%})",
        f"{rocs[0]} / {prs[0]}",
        f"({m['flagged_share']:.1%})",
        f"{m['f1_auto']:.3f}",
        f"{m['f1_fixed']:.3f}",
        f"{m['f1_true']:.3f}",
        f"{sum(r['seconds'] for r in rows):.0f}",
        *(f"{roc} / {pr}" for roc, pr in zip(rocs[1:], prs[1:])),
        f"{sum(r['singles_seconds'] for r in rows):.0f}",
    ]
    out.append("| " + " | ".join(cells) + " |")
    out += ["", "Bold: the highest ROC-AUC (PR-AUC) of the row.", "", "Means:", ""]
    out.append("| | ROC-AUC | PR-AUC | F1 auto | F1 5 % | F1 true count |")
    out.append("|---|---:|---:|---:|---:|---:|")
    out.append(
        f"| default (the pipeline's selection) | {m['roc']:.3f} | {m['pr']:.3f} | {m['f1_auto']:.3f} | "
        f"{m['f1_fixed']:.3f} | {m['f1_true']:.3f} |"
    )
    for n in names:
        out.append(f"| {n} | {m[f'{n}_roc']:.3f} | {m[f'{n}_pr']:.3f} | | | |")
    out += ["", "```text", *closing, "```", ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folders", nargs="*", type=Path, help=f"folders of .npz files (default {DEFAULT_FOLDER})"
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=20_000,
        help="rows kept per dataset, a seeded uniform subsample above (default 20,000: the research's cap)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="subsample seed and modeling.random_state (default 0)"
    )
    parser.add_argument("--hyperparameters", choices=["simple", "complex"], default="simple")
    parser.add_argument("--metric", default="silhouette", help="evaluation.metric")
    parser.add_argument(
        "--selection",
        choices=["metric", "ensemble"],
        default="ensemble",
        help="evaluation.selection (default: the project's default)",
    )
    parser.add_argument(
        "--markdown", type=Path, help="also write the tables and the targets as markdown here"
    )
    parser.add_argument("--note", default="", help="a note on the machine for the markdown header")
    args = parser.parse_args()
    folders = args.folders or [DEFAULT_FOLDER]
    files = sorted(f for folder in folders for f in Path(folder).glob("*.npz"))
    if not files:
        print(f"no .npz datasets in {', '.join(map(str, folders))}", file=sys.stderr)
        return 2
    import sklearn

    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    setup = (
        f"selection {args.selection} (metric {args.metric}); grids {args.hyperparameters}; default config "
        f"(contamination auto) with modeling.random_state {args.seed}; row cap {args.max_rows:,}: larger sets "
        f"subsampled by a uniform draw (seed {args.seed}); every row kept, duplicates included"
    )
    singles = "; ".join(f"{name} = {plugin} {params}" for name, plugin, params in SINGLES)
    machine = (
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; Python "
        f"{platform.python_version()}, scikit-learn {sklearn.__version__}"
    )
    print(setup)
    print(f"single default detectors (plug-ins on the run's features.parquet, distinct rows): {singles}")
    print(f"machine: {machine}")
    header = console_header()
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for path in files:
            try:
                rows.append(run_dataset(path, Path(tmp), args))
            except Exception as exc:  # one broken set must not lose a long run
                print(f"{path.stem}: FAILED {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
                continue
            print(console_line(rows[-1]), flush=True)
    if not rows:
        return 1
    seconds = time.perf_counter() - total
    summary = summarise(rows)
    print("-" * len(header))
    print(console_means(summary, rows))
    closing = summary_lines(summary, len(rows), len(files), seconds, sum(r["seconds"] for r in rows))
    print("\n".join(closing))
    if args.markdown:
        command = shlex.join(["bench/quality.py", *sys.argv[1:]])
        preamble = [
            f"Command: `{command}` (started {started_at}, {seconds / 60:.0f} min).",
            "",
            f"Setup: {setup}.",
            "",
            f"Single default detectors, each on the run's scaled `features.parquet`, fitted on distinct rows like "
            f"the pipeline: {singles}.",
            "",
            f"Machine: {machine}" + (f"; {args.note}" if args.note else "") + ".",
            "",
            "Columns: ROC-AUC and PR-AUC (average precision) of the scores; flagged: the rows the pipeline "
            "flagged at its own cut (contamination auto); F1 auto: their F1; F1 5 %: the top 5 % of the same "
            "scores; F1 true count: exactly as many rows flagged as there are anomalies (knows the count: a "
            "reference); s: the pipeline's seconds (preprocess, detect, select); singles s: the five single "
            "detectors together.",
        ]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, summary, preamble, closing))
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
