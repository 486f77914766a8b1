"""Write files so that a reader never sees half of one.

Every output a later task reads is written under a temporary name in the same directory and then
renamed over the final name (``os.replace`` is atomic within one file system). A task killed
mid-write leaves at most a hidden ``.<name>.<pid>-<random>.tmp`` that nothing reads; its retry
writes the file again from scratch.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name next to ``path`` that keeps its suffix (``np.save`` and pandas look at it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` (a file or a directory).

    On an exception the temporary file or directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_dir():
            _replace_dir(tmp, path)
        else:
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Swap a finished directory into place; the old one is renamed away first, then deleted."""
    old = None
    if path.is_dir():
        old = temporary_sibling(path.with_name(path.name + ".old"))
        os.replace(path, old)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (numpy values, non-string keys, anything else as ``str``)."""
    import orjson

    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    return write_bytes(path, orjson.dumps(data, option=options, default=str))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def copy_file(source: str | Path, target: str | Path) -> Path:
    with replacing(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)
