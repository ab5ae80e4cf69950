"""Certificates: the one loader of X.509 certificate files (PEM or DER), and the directory of
trusted certificates ``release verify`` and ``verity verify`` take.

A release run loads the certificate of each plan key from the certificates directory, ``release
verify`` and ``verity verify --certs`` load every certificate in a directory, and the other commands
load the certificates they are given; all of them through :func:`load_certificate`.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ..crypto import CertificateError, load_certificate_bytes
from ..errors import InputError
from .files import read_regular

# Far above any real certificate (a few KiB even with long chains of extensions).
MAX_CERTIFICATE = 1 << 20
SUFFIXES = (".pem", ".crt", ".der", ".cer")


def load_certificate(path: str | Path) -> x509.Certificate:
    """A PEM or DER X.509 certificate file, every part of it parsed; InputError (one line) for
    anything else, a malformed subject, issuer, extension or public key included. A FIFO, device or
    directory is refused at once (a symlink to a regular file is read)."""
    path = Path(path)
    raw = read_regular(path, MAX_CERTIFICATE, what="certificate", follow_symlinks=True)
    try:
        return load_certificate_bytes(raw, pem=True)
    except CertificateError as err:
        raise InputError(f"{path} {err}") from None


def load_certs_dir(certs_dir: str | Path) -> list[x509.Certificate]:
    """Every certificate (``*.pem``, ``*.crt``, ``*.der``, ``*.cer``) in a directory, in name order."""
    certs_dir = Path(certs_dir)
    if not certs_dir.is_dir():
        raise InputError(f"certificates directory {certs_dir} does not exist")
    certs = [load_certificate(p) for p in sorted(certs_dir.iterdir()) if p.is_file() and p.suffix in SUFFIXES]
    if not certs:
        raise InputError(f"no certificates (*.pem, *.crt, *.der) in {certs_dir}")
    return certs
