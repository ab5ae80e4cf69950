"""Where a PIN comes from: a file, an environment variable named by the user, or a prompt.

Never argv, never a URI, never a log line. A PIN is read once per process and kept only in memory:
a PIN file may be a pipe (``--pin-file <(pass show token)``), read once, at most ``MAX_PIN_BYTES``
of UTF-8; a variable named by ``--pin-env`` is removed from the environment as soon as it is read,
so no child process inherits it.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PinError, reading


@dataclass(frozen=True)
class PinSource:
    file: Path | None = None
    env: str | None = None
    prompt: bool = True

    def describe(self) -> str:
        if self.file:
            return f"PIN file {self.file}"
        if self.env:
            return f"environment variable {self.env}"
        return "prompt"

    def read(self, token_label: str) -> str:
        if self.file and self.env:
            raise PinError("give either --pin-file or --pin-env, not both")
        if self.file:
            return _read_pin_file(Path(self.file))
        if self.env:
            return _read_pin_env(self.env)
        if self.prompt and sys.stdin.isatty():
            value = getpass.getpass(f"PIN for token '{token_label}': ")
            if not value:
                raise PinError("empty PIN")
            return value
        raise PinError(f"token '{token_label}' needs a PIN: give --pin-file FILE or --pin-env VAR")


MAX_PIN_BYTES = 4096

# PINs already taken from sources that cannot be read twice: variables removed from the
# environment, and pipes (by device and inode). Another token in the same run reuses them.
_TAKEN_ENV: dict[str, str] = {}
_TAKEN_PIPES: dict[tuple[int, int], str] = {}


def take_env(name: str) -> None:
    """Move variable ``name`` out of the environment into memory now, before any child process
    starts; a later read of the PIN takes it from there."""
    value = os.environ.pop(name, None)
    if value is not None:
        _TAKEN_ENV[name] = value


def _read_pin_env(name: str) -> str:
    """The PIN in variable ``name``, which is then removed from the process environment (os.environ
    and the C environment: ``os.environ.pop`` calls unsetenv)."""
    take_env(name)
    value = _TAKEN_ENV.get(name)
    if value is None:
        raise PinError(f"environment variable {name} (named by --pin-env) is not set")
    if not value:
        raise PinError(f"environment variable {name} (named by --pin-env) is empty")
    return value


def _read_pin_file(path: Path) -> str:
    """A PIN from a regular file or a pipe; one trailing line break is not part of it."""
    with reading("PIN file", path, PinError):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise PinError(f"PIN file {path} is a directory")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            raise PinError(f"PIN file {path} is neither a file nor a pipe")
        pipe = (st.st_dev, st.st_ino) if not stat.S_ISREG(st.st_mode) else None
        if pipe in _TAKEN_PIPES:
            return _TAKEN_PIPES[pipe]
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o007:
            print(f"segway-sign: warning: PIN file {path} is readable by others (chmod 600 it)",
                  file=sys.stderr)
        data = _read_limited(fd, path)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise PinError(f"PIN file {path} is not UTF-8 text") from None
    if "\0" in text:
        raise PinError(f"PIN file {path} holds a NUL character")
    text = text.rstrip("\r\n")
    if not text:
        raise PinError(f"PIN file {path} is empty")
    if pipe is not None:
        _TAKEN_PIPES[pipe] = text
    return text


def _read_limited(fd: int, path: Path) -> bytes:
    chunks, size = [], 0
    while True:
        with reading("PIN file", path, PinError):
            chunk = os.read(fd, MAX_PIN_BYTES + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_PIN_BYTES:
            raise PinError(f"PIN file {path} is longer than {MAX_PIN_BYTES} bytes")
