"""Where a PIN comes from: a file, an environment variable named by the user, or a prompt.

Never argv, never a URI, never a log line. A PIN is read once per process and kept only in memory.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PinError


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
            value = os.environ.get(self.env)
            if value is None:
                raise PinError(f"environment variable {self.env} (named by --pin-env) is not set")
            if not value:
                raise PinError(f"environment variable {self.env} (named by --pin-env) is empty")
            return value
        if self.prompt and sys.stdin.isatty():
            value = getpass.getpass(f"PIN for token '{token_label}': ")
            if not value:
                raise PinError("empty PIN")
            return value
        raise PinError(f"token '{token_label}' needs a PIN: give --pin-file FILE or --pin-env VAR")


def _read_pin_file(path: Path) -> str:
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise PinError(f"PIN file {path} does not exist") from None
    except OSError as err:
        raise PinError(f"cannot read PIN file {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise PinError(f"PIN file {path} is a directory")
    if st.st_mode & 0o007:
        print(f"segway-sign: warning: PIN file {path} is readable by others (chmod 600 it)",
              file=sys.stderr)
    text = data.decode("utf-8", errors="strict").rstrip("\r\n")
    if not text:
        raise PinError(f"PIN file {path} is empty")
    return text
