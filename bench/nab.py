"""The NAB time series through the whole pipeline, default config: the baseline before time-aware detection.

Every series of the NAB development set (default ``../shared/data/nab``: CSVs ``timestamp,value`` in
five folders, labelled anomaly windows in ``combined_windows.json`` keyed ``folder/file.csv``) is
served as JSON (a list of ``{"timestamp": ISO text, "value": number}``) by one loopback HTTP server
(127.0.0.1, one thread, started once, each series under its own path) and run through the CLI
(``python -m anomaly_detection run``) with the default config: only ``source.url``, the output
directories, the run id and ``processing.mode=native`` are set. The run's own flags are the rows of
its ``anomalies.csv`` (column ``row``: the position in the ingested table, mapped back to the
series' timestamps and checked against the row's own ``timestamp``).

Printed per series and as means over the series that have windows:

* recall: the share of labelled windows holding at least one flag (the window is the unit);
* precision: the share of flags inside a window (0 when nothing is flagged);
* F: their harmonic mean; flagged: the rows flagged; seconds: the CLI process's wall time;
* false events: runs of consecutive flags (consecutive = one step of the series apart, the step being
  the median gap of its timestamps) with no flag inside a window. On ``artificialNoAnomaly`` (no
  windows: every flag is a false alarm) they are reported separately and kept out of the means;
* the same figures for a baseline of a seeded random 5 % of the rows (``--seed``), so the run's F can
  be compared with chance.

    .venv/bin/python bench/nab.py                                  # all 40 series
    .venv/bin/python bench/nab.py --series realTraffic/speed       # the series whose key contains this
    .venv/bin/python bench/nab.py --series 'art_*' --series grok   # globs or substrings, repeatable
    .venv/bin/python bench/nab.py --markdown /tmp/nab.md
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "nab"
NO_ANOMALY = "artificialNoAnomaly"
RANDOM_SHARE = 0.05


def series_keys(folder: Path, patterns: list[str] | None) -> list[str]:
    """``folder/file.csv`` keys of the labelled series matching any of ``patterns`` (globs or substrings)."""
    windows = json.loads((folder / "combined_windows.json").read_text())
    keys = sorted(k for k in windows if (folder / k).is_file())

    def matches(key: str, pattern: str) -> bool:
        return fnmatch.fnmatch(key, pattern) if any(c in pattern for c in "*?[") else pattern in key

    return [k for k in keys if any(matches(k, p) for p in patterns)] if patterns else keys


def load_series(folder: Path, key: str) -> pd.DataFrame:
    frame = pd.read_csv(folder / key)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame


def series_json(frame: pd.DataFrame) -> bytes:
    stamps = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    records = [
        {"timestamp": t, "value": float(v)} for t, v in zip(stamps, frame["value"].to_numpy(), strict=True)
    ]
    return json.dumps(records).encode()


class SeriesServer:
    """One loopback HTTP server in one thread: ``GET /<folder>/<file.csv>`` returns that series as JSON."""

    def __init__(self, folder: Path, keys: list[str]):
        self.folder, self.keys, self.cache = folder, set(keys), {}
        bench = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                key = self.path.split("?", 1)[0].lstrip("/")
                if key not in bench.keys:
                    self.send_error(404, "no such series")
                    return
                body = bench.body(key)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="nab-server", daemon=True)

    def body(self, key: str) -> bytes:
        if key not in self.cache:
            self.cache = {key: series_json(load_series(self.folder, key))}  # one series held at a time
        return self.cache[key]

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}/{key}"

    def __enter__(self) -> SeriesServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def run_cli(url: str, workdir: Path, run_id: str) -> tuple[float, int, str]:
    """The CLI with the default config: wall seconds, exit code, stdout (stderr's end on failure)."""
    command = [sys.executable, "-m", "anomaly_detection", "run", "--quiet", "--run-id", run_id]
    for key, value in (
        ("source.url", url),
        ("processing.mode", "native"),
        ("output.runs_dir", workdir / "runs"),
        ("output.reports_dir", workdir / "reports"),
    ):
        command += ["--set", f"{key}={value}"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    return wall, proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr[-2000:]


def run_flags(run_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    """Positions of the rows the run flagged (``anomalies.csv``), checked against their timestamps."""
    anomalies = pd.read_csv(run_dir / "anomalies.csv")
    positions = anomalies["row"].to_numpy(dtype=np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= len(frame)):
        raise SystemExit(f"{run_dir}: flagged row positions outside the series")
    if "timestamp" in anomalies:
        theirs = pd.to_datetime(anomalies["timestamp"], format="mixed").dt.tz_localize(None)
        ours = frame["timestamp"].to_numpy()[positions]
        if not (theirs.to_numpy() == ours).all():
            raise SystemExit(
                f"{run_dir}: the flagged rows' timestamps differ from the series' at their positions"
            )
    return np.unique(positions)


def score(frame: pd.DataFrame, windows: list[list[str]], positions: np.ndarray) -> dict:
    """Window recall, precision, F, flagged count and false events of the flags at ``positions``."""
    stamps = frame["timestamp"].to_numpy()
    flagged = np.zeros(len(frame), dtype=bool)
    flagged[positions] = True
    inside = np.zeros(len(frame), dtype=bool)
    hit = 0
    for start, end in windows:
        in_window = (stamps >= np.datetime64(pd.Timestamp(start))) & (
            stamps <= np.datetime64(pd.Timestamp(end))
        )
        inside |= in_window
        hit += bool((flagged & in_window).any())
    n_flagged = int(flagged.sum())
    recall = hit / len(windows) if windows else float("nan")
    precision = float((flagged & inside).sum() / n_flagged) if n_flagged else 0.0
    if not windows:
        precision = float("nan")
    f = 2 * precision * recall / (precision + recall) if windows and precision + recall > 0 else 0.0
    return {
        "recall": recall,
        "precision": precision,
        "f": f if windows else float("nan"),
        "flagged": n_flagged,
        "events": false_events(stamps, flagged, inside),
    }


def false_events(stamps: np.ndarray, flagged: np.ndarray, inside: np.ndarray) -> int:
    """Runs of consecutive flags (one step of the series apart) without a flag inside a window."""
    where = np.flatnonzero(flagged)
    if not len(where):
        return 0
    step = np.median(np.diff(stamps)) if len(stamps) > 1 else np.timedelta64(0, "s")
    starts = np.r_[True, np.diff(stamps[where]) > step]
    run_id = np.cumsum(starts)
    true_runs = set(run_id[inside[where]].tolist())
    return int(run_id[-1]) - len(true_runs)


def random_flags(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max(1, round(RANDOM_SHARE * n)), replace=False))


def run_series(server: SeriesServer, key: str, windows: list, workdir: Path, seed: int) -> dict:
    frame = load_series(server.folder, key)
    run_id = "nab-" + key.replace("/", "-").removesuffix(".csv")
    wall, code, text = run_cli(server.url(key), workdir, run_id)
    row = {"key": key, "rows": len(frame), "windows": len(windows), "seconds": wall}
    if code != 0:
        reason = text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
        reason = reason.removeprefix("error: ").split(" (run ")[0]
        print(f"{key}: the run stopped (exit {code}): {reason}", file=sys.stderr)
        return {**row, "failed": True, "error": reason}
    run = score(frame, windows, run_flags(workdir / "runs" / run_id, frame))
    chance = score(frame, windows, random_flags(len(frame), seed))
    return {**row, "failed": False, "run": run, "random": chance}


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list[dict]) -> dict:
    done = [r for r in rows if not r["failed"]]
    labelled = [r for r in done if r["windows"]]
    clean = [r for r in done if r["key"].startswith(NO_ANOMALY + "/")]
    out = {
        "series": len(rows),
        "failed": len(rows) - len(done),
        "labelled": len(labelled),
        "clean": len(clean),
    }
    for side in ("run", "random"):
        out[side] = {m: mean([r[side][m] for r in labelled]) for m in ("f", "recall", "precision", "flagged")}
        out[side]["events_clean"] = sum(r[side]["events"] for r in clean)
        out[side]["flagged_clean"] = sum(r[side]["flagged"] for r in clean)
    out["seconds"] = sum(r["seconds"] for r in rows)
    return out


COLUMNS = ("series", "rows", "win", "F", "recall", "prec", "flagged", "false ev", "s", "rnd F", "rnd recall", "rnd prec", "rnd false ev")  # fmt: skip


def cells(r: dict) -> list[str]:
    def num(x: float) -> str:
        return "-" if x != x else f"{x:.3f}"

    base = [r["key"], str(r["rows"]), str(r["windows"])]
    if r["failed"]:
        return [*base, "STOPPED", "", "", "", "", f"{r['seconds']:.1f}", "", "", "", ""]
    run, rnd = r["run"], r["random"]
    return [
        *base, num(run["f"]), num(run["recall"]), num(run["precision"]), str(run["flagged"]), str(run["events"]),
        f"{r['seconds']:.1f}", num(rnd["f"]), num(rnd["recall"]), num(rnd["precision"]), str(rnd["events"]),
    ]  # fmt: skip


WIDTHS = (58, 6, 3, 6, 6, 6, 7, 8, 6, 6, 10, 8, 12)


def console_line(values: list[str]) -> str:
    return " ".join(
        v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, WIDTHS, strict=True))
    )


def summary_lines(s: dict, rows: list[dict]) -> list[str]:
    stopped = [r for r in rows if r["failed"]]
    run, rnd = s["run"], s["random"]
    lines = [
        f"means over the {s['labelled']} series with windows (the run / a random {RANDOM_SHARE:.0%} of rows):",
        f"  F {run['f']:.3f} / {rnd['f']:.3f};  recall {run['recall']:.3f} / {rnd['recall']:.3f};  "
        f"precision {run['precision']:.3f} / {rnd['precision']:.3f};  flagged {run['flagged']:.0f} / {rnd['flagged']:.0f}",
        f"{NO_ANOMALY} ({s['clean']} series with a result, no windows: every flag is false): the run flagged "
        f"{run['flagged_clean']} rows in {run['events_clean']} false events; the random {RANDOM_SHARE:.0%}: "
        f"{rnd['flagged_clean']} rows in {rnd['events_clean']} events",
        f"total {s['seconds']:.0f} s (the CLI processes' wall time)",
    ]
    for r in stopped:
        lines.append(f"STOPPED (no flags, out of the means and the false events): {r['key']}: {r['error']}")
    return lines


def markdown(rows: list[dict], s: dict, preamble: list[str]) -> str:
    out = [*preamble, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    run, rnd = s["run"], s["random"]
    out.append(
        f"| **mean of {s['labelled']} with windows** | | | **{run['f']:.3f}** | {run['recall']:.3f} | "
        f"{run['precision']:.3f} | {run['flagged']:.0f} | | {s['seconds']:.0f} (total) | {rnd['f']:.3f} | "
        f"{rnd['recall']:.3f} | {rnd['precision']:.3f} | |"
    )
    return "\n".join([*out, "", "```text", *summary_lines(s, rows), "```", ""])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER, help="the NAB folder")
    parser.add_argument(
        "--series",
        action="append",
        help="only the series whose folder/file key contains this or matches this glob (repeatable)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table and the means as markdown here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random 5 %% baseline (default 0)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    if not (args.folder / "combined_windows.json").is_file():
        print(f"no NAB data at {args.folder} (combined_windows.json missing): nothing to run")
        return 0
    windows = json.loads((args.folder / "combined_windows.json").read_text())
    keys = series_keys(args.folder, args.series)
    if not keys:
        raise SystemExit(f"no series matches {args.series!r}")

    import sklearn

    started_at = datetime.now(UTC)
    preamble = [
        f"Command: `bench/nab.py {shlex.join(sys.argv[1:])}` (started {started_at:%Y-%m-%d %H:%M} UTC).",
        "",
        f"Setup: {len(keys)} series of {args.folder.name}, each served as JSON by a loopback server and run through "
        "the CLI with the default config (processing.mode native); flags = the run's anomalies.csv. "
        f"Random baseline: {RANDOM_SHARE:.0%} of the rows drawn with seed {args.seed}.",
        "",
        f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; Python "
        f"{platform.python_version()}, scikit-learn {sklearn.__version__}.",
        "",
        "Columns: win: labelled windows; F, recall (windows with >= 1 flag), prec (flags inside a window, 0 when "
        "none): the run; flagged: rows it flagged; false ev: runs of consecutive flags (one step apart) with no flag "
        "in a window; s: the CLI's wall seconds; rnd: the same for the random 5 %.",
    ]
    for line in preamble[::2]:
        print(line)
    print(console_line(list(COLUMNS)), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-nab-") as tmp, SeriesServer(args.folder, keys) as server:
        workdir = args.workdir or Path(tmp)
        for key in keys:
            rows.append(run_series(server, key, windows[key], workdir, args.seed))
            print(console_line(cells(rows[-1])), flush=True)
    s = summarise(rows)
    for line in summary_lines(s, rows):
        print(line)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, s, preamble))
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
