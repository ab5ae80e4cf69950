"""Atomic outputs: a failure never leaves a partial file or directory behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError, SegwayError


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing output unless ``force``; return it as a Path."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} exists (use --force to replace it)")
    if not path.parent.is_dir():
        raise SegwayError(f"output directory {path.parent} does not exist")
    return path


def write_file(path: str | os.PathLike, data: bytes, force: bool = False, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``path`` only if the block succeeds.

    With ``force`` an existing ``path`` is replaced (after the new content is complete).
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} exists (use --force to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SegwayError(f"output directory {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.rename(path, old / "content")
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
