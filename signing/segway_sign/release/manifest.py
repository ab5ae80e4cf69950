"""``manifest.json``: what a release contains and how it was made, and its CMS signature.

The manifest lists the sha256 of every input and output, the key URIs (never a PIN), the
certificate fingerprints, tool versions and the time (``SOURCE_DATE_EPOCH`` when set). Its signature
``manifest.json.p7s`` is a detached CMS SignedData by the plan's manifest key.
"""

from __future__ import annotations

import hashlib
import json
import platform
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
    cms.verify_detached(sig, manifest_bytes, [cert])
    return sig


def load(release_dir: Path) -> tuple[dict, bytes]:
    path = Path(release_dir) / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} manifest")
    return doc, raw
