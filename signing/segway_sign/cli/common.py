"""Options and output helpers every subcommand shares."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import click
from asn1crypto import pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from ..errors import InputError, UsageError
from ..hsm import PinSource, TokenRawECKey, open_private_key, open_session
from ..hsm.session import TokenSession
from ..raw_ec import RawECPublicKey


# Option types for files a command reads or writes.
IN_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
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

    def open_session(self, uri: str, login: bool = True) -> TokenSession:
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


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM or DER X.509 certificate."""
    data = path.read_bytes()
    for loader in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return loader(data)
        except ValueError:
            pass
    raise InputError(f"{path}: not a PEM/DER X.509 certificate")


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
    if not path.is_file():
        raise UsageError(f"key {spec} is neither a pkcs11: URI nor a file")
    data = path.read_bytes()
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
