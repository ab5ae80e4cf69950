"""Reading the files a release run or ``release verify`` takes in: regular files only, never waiting."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from ..errors import InputError

_BUF = 1 << 20


def read_regular(path: Path, limit: int, what: str = "", follow_symlinks: bool = False) -> bytes:
    """A file's bytes. Anything but a regular file (a FIFO, a device, a directory; a symlink unless
    ``follow_symlinks``) is refused at once, without waiting on it; so is a file larger than ``limit``.
    ``what`` ("certificate") starts the error messages."""
    name = f"{what} {path}" if what else str(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise InputError(f"{name} is a symbolic link, not a regular file") from None
        raise InputError(f"cannot read {name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{name} is not a regular file")
        if st.st_size > limit:
            raise InputError(f"{name} is {st.st_size} bytes, more than the {limit} a release holds there")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(_BUF, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(f"{name} grew while it was read")
    return data


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_BUF), b""):
            h.update(chunk)
    return h.hexdigest()
