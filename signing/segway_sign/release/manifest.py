"""``manifest.json``: what a release contains and how it was made, and its CMS signature.

The manifest lists the sha256 of every input and output, the key URIs (never a PIN), the
certificate fingerprints, tool versions and the time (``SOURCE_DATE_EPOCH`` when set). Its signature
``manifest.json.p7s`` is a detached CMS SignedData by the plan's manifest key, in one exact form: DER,
SHA-256, no signed attributes, the signer's certificate and nothing else (``cms.verify_exact``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import stat
from importlib import metadata
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..errors import InputError
from ..hsm.uri import Pkcs11Uri
from .. import cms
from ..reproducible import source_datetime

FORMAT = "segway-release-manifest/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.p7s"
_BUF = 1 << 20
# Far above any real manifest (a few KiB per step) or signature (one certificate and a signature).
MAX_MANIFEST = 64 << 20
MAX_SIGNATURE = 1 << 20


def read_regular(path: Path, limit: int) -> bytes:
    """A release file's bytes. Anything but a regular file (a FIFO, a device, a directory, a symlink)
    is refused at once, without waiting on it; so is a file larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{path} is a symbolic link, not a regular file") from None
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise InputError(f"{path} is {st.st_size} bytes, more than the {limit} a release holds there")
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
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(f"{path} grew while it was read")
    return data


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_BUF), b""):
            h.update(chunk)
    return h.hexdigest()


def public_uri(uri: str) -> str:
    """The URI as it may be published: normalised, without any PIN attribute."""
    return str(Pkcs11Uri.parse(uri))


def cert_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def release_time() -> str:
    return source_datetime().strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# Recorded name -> the distributions that provide it; dtc's own build (python3-dtc in Yocto) installs
# pylibfdt as the "libfdt" distribution.
TOOL_DISTRIBUTIONS = {name: (name,) for name in ("segway-sign", "cryptography", "asn1crypto", "python-pkcs11",
                                                 "PyYAML")}
TOOL_DISTRIBUTIONS["pylibfdt"] = ("pylibfdt", "libfdt")


def tool_versions() -> dict[str, str]:
    tools = {"python": platform.python_version()}
    for name, dists in TOOL_DISTRIBUTIONS.items():
        v = next(filter(None, map(_version, dists)), None)
        if v:
            tools[name] = v
    return tools


def encode(manifest: dict) -> bytes:
    """Canonical bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def sign(manifest_bytes: bytes, key, cert: x509.Certificate) -> bytes:
    sig = cms.sign_detached(manifest_bytes, key, cert, attributes=False, include_certs=True)
    verify_signature(sig, manifest_bytes, [cert])
    return sig


def verify_signature(sig: bytes, manifest_bytes: bytes, certs: list[x509.Certificate]) -> x509.Certificate:
    """The certificate among ``certs`` whose key signed ``manifest_bytes`` in exactly the form ``sign``
    writes; VerificationError/InputError otherwise."""
    return cms.verify_exact(sig, manifest_bytes, certs, include_cert=True)


def parse(raw: bytes, path: Path) -> dict:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not valid JSON") from None
    except RecursionError:
        raise InputError(f"{path} nests too deeply to be a manifest") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} manifest")
    return doc


def load(release_dir: Path) -> tuple[dict, bytes]:
    path = Path(release_dir) / MANIFEST
    raw = read_regular(path, MAX_MANIFEST)
    return parse(raw, path), raw
