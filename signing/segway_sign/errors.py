"""One exception family for segway-sign.

The library raises these; the CLI turns any of them into a one-line message and a non-zero exit
status. Anything else escaping is a bug.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


class SegwayError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(SegwayError):
    """Options that contradict each other or name something that does not exist."""

    exit_code = 2


class InputError(SegwayError):
    """A malformed, truncated or unsupported input file."""


class OutputExistsError(SegwayError):
    """The output exists and --force was not given."""


class TokenError(SegwayError):
    """The PKCS#11 module, token, login or key could not be used."""


class PinError(TokenError):
    """The PIN could not be read, or the token refused it."""


class VerificationError(SegwayError):
    """A signature, hash or structure did not verify."""


@contextlib.contextmanager
def reading(what: str, path: str | os.PathLike, error: type[SegwayError] = InputError) -> Iterator[None]:
    """Opening or reading ``path`` (a ``what``: "input", "plan", "PIN file") inside the block: a
    missing file becomes "<what> <path> does not exist", any other OSError "cannot read <what> <path>:
    <why>", both one-line ``error``s without the OSError's traceback."""
    try:
        yield
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
