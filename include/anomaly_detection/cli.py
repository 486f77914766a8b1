"""Command line: ``python -m anomaly_detection run --config configs/demo.yaml --set key=value``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from anomaly_detection.config import load_config, parse_set_option
from anomaly_detection.errors import PipelineError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly_detection", description="Turn a REST JSON API into an anomaly report."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the pipeline (ingest, preprocess, detect, evaluate, report; native or Spark by processing.mode)",
    )
    run.add_argument("--config", "-c", help="YAML config file (see configs/default.yaml)")
    run.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option, e.g. --set modeling.hyperparameters=complex (value read as YAML)",
    )
    run.add_argument("--run-id", help="run id (default: a new timestamped id)")
    run.add_argument(
        "--rerun-of", metavar="RUN_ID", help="this run reruns RUN_ID: its report shows what changed"
    )
    run.add_argument("--quiet", "-q", action="store_true", help="do not echo the log to stderr")

    replay = commands.add_parser(
        "replay",
        help="re-run a saved run from its raw snapshot and resolved config, without the network, and compare",
    )
    replay.add_argument("run_dir", metavar="RUN_DIR", help="the run's directory, e.g. runs/<run_id>")
    replay.add_argument("--run-id", help="id of the replay run (default: <run_id>.replay-<time>)")
    replay.add_argument("--quiet", "-q", action="store_true", help="do not echo the log to stderr")

    check = commands.add_parser(
        "check-config", help="validate a config and print it resolved (secrets redacted)"
    )
    check.add_argument("--config", "-c")
    check.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    try:
        overrides = dict(parse_set_option(o) for o in args.overrides)
        config = load_config(args.config, overrides)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.command == "check-config":
        import yaml

        print(yaml.safe_dump(config.redacted(), sort_keys=False), end="")
        return 0

    from anomaly_detection.pipeline.run import run_pipeline
    from anomaly_detection.runs import make_run_id, safe_run_id

    run_id = safe_run_id(args.run_id) if args.run_id else make_run_id()
    outcome = run_pipeline(config, run_id=run_id, echo=not args.quiet, rerun_of=args.rerun_of)
    if outcome.status != "succeeded":
        print(
            f"error: {outcome.error} (run {outcome.run_id}; logs and raw responses in {outcome.paths.root})",
            file=sys.stderr,
        )
        return 1
    best = outcome.best or {}
    print(
        f"run {outcome.run_id}: best {best.get('algorithm')} {best.get('params')} flagged "
        f"{best.get('anomaly_count')} rows ({100 * best.get('anomaly_share', 0):.2f}%)"
    )
    print(f"report: {outcome.paths.report}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from anomaly_detection.pipeline.replay import replay

    try:
        outcome = replay(args.run_dir, run_id=args.run_id, echo=not args.quiet)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if outcome.status == "failed":
        print(f"error: the replay failed: {outcome.error} (logs in {outcome.replayed.root})", file=sys.stderr)
        return 1
    comparison = outcome.comparison
    assert comparison is not None
    print(
        f"replay {outcome.replayed.run_id} of {outcome.original.run_id}: {len(comparison.checks)} outputs compared"
    )
    for line in comparison.details:
        print(f"  differs: {line}")
    print(
        "identical: same scores, same selection, same anomalies"
        if comparison.identical
        else "DIFFERENT from the original"
    )
    print(f"report: {outcome.replayed.report}")
    return 0 if comparison.identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
