import os
import signal
import subprocess
import sys

import pytest

from anomaly_detection import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_directory_replaces_a_directory_or_a_file(tmp_path):
    target = tmp_path / "flattened.parquet"
    target.write_text("a single file from a native run")
    with atomic.replacing(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0.parquet").write_text("x")
    assert target.is_dir() and [p.name for p in target.iterdir()] == ["part-0.parquet"]
    with atomic.replacing(target) as tmp:
        tmp.mkdir()
        (tmp / "part-1.parquet").write_text("y")
    assert [p.name for p in target.iterdir()] == ["part-1.parquet"]
    with atomic.replacing(target) as tmp:
        tmp.write_text("a file again")
    assert target.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flattened.parquet"]


def test_temporary_names_keep_the_suffix_and_differ(tmp_path):
    a, b = (
        atomic.temporary_sibling(tmp_path / "kept_rows.npy"),
        atomic.temporary_sibling(tmp_path / "kept_rows.npy"),
    )
    assert a != b and a.suffix == ".npy" and a.name.startswith(".")


def test_a_process_killed_mid_write_never_exposes_a_partial_file(tmp_path):
    target = tmp_path / "big.bin"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from anomaly_detection import atomic\n"
                "with atomic.replacing(sys.argv[1]) as tmp:\n"
                "    f = open(tmp, 'wb'); f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            ),
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.") and leftovers[0].endswith(".tmp.bin")
    atomic.write_bytes(target, b"complete")  # the retry
    assert target.read_bytes() == b"complete"
