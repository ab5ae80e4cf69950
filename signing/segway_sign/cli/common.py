"""Options and output helpers every subcommand shares."""

from __future__ import annotations

import functools
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import click
from asn1crypto import pem
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from ..errors import InputError, UsageError, reading
from ..hsm import PinSource, Pkcs11Uri, TokenRawECKey, TokenSession, open_private_key, open_session
from ..hsm.pin import take_env
from ..raw_ec import RawECPublicKey
from ..release.certs import load_certificate  # noqa: F401  (the one certificate loader, for every command)


# Exit status of a verify command whose signatures all check but which was given no trust anchor
# (fused key hash, SRK table, EK root): "OK (signature only: ...)" and 3, never a bare OK and 0.
EXIT_NO_ANCHOR = 3


# ---------------------------------------------------------------------------------------------
# Inputs: every artifact a command reads goes through open_input/read_input, which refuse at once
# (one line, no waiting) anything that is not a regular file: a FIFO would block the reader, a
# device would never end, a directory is not an artifact. Inputs are only ever opened for reading.

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse(path: Path, mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path} is {_kind(mode)}, not a regular file")


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """``path`` as a Path if it names an existing regular file (symlinks followed); else InputError."""
    path = Path(path)
    with reading(what, path):
        st = path.stat()
    _refuse(path, st.st_mode, what)
    return path


def open_input(path: str | os.PathLike, what: str = "input") -> BinaryIO:
    """Open an artifact for reading; InputError (one line) unless it is a regular file.

    The file is opened without blocking (a FIFO that appeared since the check cannot stall the
    open) and checked again on the open descriptor."""
    path = check_input(path, what)
    with reading(what, path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _refuse(path, os.fstat(fd).st_mode, what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike, what: str = "input") -> bytes:
    """An artifact's bytes (see open_input)."""
    with open_input(path, what) as f, reading(what, path):
        return f.read()


class InputFile(click.Path):
    """Option type of an artifact a command reads: an existing regular file.

    A missing file stays click's usage error; a FIFO, device or directory is refused with one
    line (InputError) while the options are parsed, before anything waits on it."""

    def __init__(self):
        super().__init__(exists=True, dir_okay=True, path_type=Path)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        check_input(path, f"{param.opts[0] if param is not None and param.opts else 'input'}")
        return path


# Option types for files a command reads or writes.
IN_FILE = InputFile()
OUT_FILE = click.Path(dir_okay=False, path_type=Path)


@dataclass(frozen=True)
class TokenOptions:
    """--module / --pin-file / --pin-env as given to one subcommand."""

    module: str | None
    pin: PinSource

    def open_key(self, uri: str, raw_ok: bool = False):
        """The token key a URI names. ``raw_ok``: the caller handles keys on curves cryptography
        lacks (brainpoolP256t1, STM32 only); everyone else gets a one-line refusal."""
        key = open_private_key(uri, module_path=self.module, pin=self.pin)
        if isinstance(key, TokenRawECKey) and not raw_ok:
            raise UsageError(f"key {uri} is on {key.curve_name}, which only 'stm32' commands use")
        return key

    def open_session(self, uri: str | Pkcs11Uri, login: bool = True) -> TokenSession:
        return open_session(uri, module_path=self.module, pin=self.pin, login=login)


def token_options(func):
    """Add --module, --pin-file, --pin-env; pass ``token: TokenOptions``."""
    @click.option("--module", "module_path", metavar="PATH", envvar="SEGWAY_PKCS11_MODULE",
                  help="PKCS#11 module (default: $SEGWAY_PKCS11_MODULE, else the development SoftHSM).")
    @click.option("--pin-file", type=click.Path(dir_okay=False, path_type=Path), envvar="SEGWAY_PIN_FILE",
                  help="File holding the user PIN (default: $SEGWAY_PIN_FILE).")
    @click.option("--pin-env", metavar="VAR", help="Name of an environment variable holding the user PIN.")
    @functools.wraps(func)
    def wrapper(*args, module_path, pin_file, pin_env, **kwargs):
        if pin_env:
            take_env(pin_env)  # out of the environment before any child process starts
        return func(*args, token=TokenOptions(module_path, PinSource(file=pin_file, env=pin_env)), **kwargs)
    return wrapper


def output_options(func):
    """Add --force and --json; pass ``force`` and ``as_json``."""
    @click.option("--force", is_flag=True, help="Replace an existing output.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for CI logs).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def emit(result: dict, as_json: bool, text: str | None = None) -> None:
    """Print a command's result: JSON for machines, or a short text for people."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


def _raw_ec_public_key(data: bytes) -> RawECPublicKey | None:
    """A PEM/DER public key on a curve cryptography lacks (brainpoolP256t1), else None."""
    if pem.detect(data):
        try:
            kind, _, data = pem.unarmor(data)
        except ValueError:
            return None
        if kind != "PUBLIC KEY":
            return None
    return RawECPublicKey.from_spki(data)


def load_public_key(spec: str, token: TokenOptions | None, raw_ok: bool = False):
    """A public key from a pkcs11: URI (read from the token) or a PEM/DER public key or certificate file.

    ``raw_ok``: also accept keys on curves cryptography lacks (``RawECPublicKey``, STM32 only)."""
    if spec.startswith("pkcs11:"):
        if token is None:
            raise UsageError(f"key {spec}: a pkcs11: URI is not accepted here; give a key or certificate file")
        return token.open_key(spec, raw_ok=raw_ok).public_key()
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"key {spec} is neither a pkcs11: URI nor a file")
    data = read_input(path, "key")
    for loader in (load_pem_public_key, load_der_public_key):
        try:
            return loader(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            pass
    raw = _raw_ec_public_key(data)
    if raw is not None:
        if not raw_ok:
            raise UsageError(f"{spec}: a {raw.curve_name} key is only used by 'stm32' commands")
        return raw
    try:
        return load_certificate(path).public_key()
    except InputError:
        raise InputError(f"{spec}: not a PEM/DER public key or certificate") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{spec}: the certificate holds an invalid or unsupported public key") from None
