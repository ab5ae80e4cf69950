"""``manifest.json``: what a release contains and how it was made, and its CMS signature; built here
when a release is signed, and read here (signature first) when it is checked.

The manifest lists the sha256 of every input and output, the key URIs (never a PIN), the
certificate fingerprints, tool versions and the time (``SOURCE_DATE_EPOCH`` when set). Its signature
``manifest.json.p7s`` is a detached CMS SignedData by the plan's manifest key, in one exact form: DER,
SHA-256, no signed attributes, the signer's certificate and nothing else (``cms.verify_exact``).
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .. import cms
from ..errors import InputError, SegwayError, VerificationError
from ..hsm.uri import Pkcs11Uri
from ..reproducible import source_datetime
from .files import read_regular, sha256_file

if TYPE_CHECKING:
    from .plan import Plan, Step

FORMAT = "segway-release-manifest/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.p7s"
# Far above any real manifest (a few KiB per step) or signature (one certificate and a signature).
MAX_MANIFEST = 64 << 20
MAX_SIGNATURE = 1 << 20


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


def step_record(step: Step, input_sha256: dict[str, str], outputs: dict[str, str], details: dict) -> dict:
    """A step's entry in the manifest: what it was asked to do, the sha256 of what it read and wrote,
    and what it reports (``details``, which its ``verify`` reads back)."""
    return {"id": step.id, "type": step.type, "key": step.key,
            "inputs": {role: step.inputs[role] for role in sorted(step.inputs)},
            "input_sha256": input_sha256, "options": step.options, "outputs": outputs, "details": details}


def build(plan: Plan, certs: dict[str, x509.Certificate], input_hashes: dict[str, str],
          step_records: list[dict]) -> dict:
    """The manifest of a release made from ``plan`` (its keys' certificates by key name), whose
    deploy-dir inputs hash to ``input_hashes``, by steps that made ``step_records``."""
    return {
        "format": FORMAT,
        "machine": plan.machine,
        "plan": {"file": plan.path.name, "sha256": plan.sha256},
        "created": release_time(),
        "tools": tool_versions(),
        "keys": {
            name: {"uri": public_uri(spec.uri), "certificate": spec.cert,
                   "certificate_sha256": cert_fingerprint(certs[name]),
                   "subject": certs[name].subject.rfc4514_string()}
            for name, spec in sorted(plan.keys.items())
        },
        "manifest_key": plan.manifest_key,
        "inputs": input_hashes,
        "steps": step_records,
        "outputs": {k: v for r in step_records for k, v in r["outputs"].items()},
    }


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


def read_verified(release_dir: Path, certs: list[x509.Certificate]) -> tuple[dict, x509.Certificate]:
    """A release's manifest, once its signature is checked (see :func:`check_manifest`)."""
    raw = read_regular(release_dir / MANIFEST, MAX_MANIFEST)
    sig = read_regular(release_dir / SIGNATURE, MAX_SIGNATURE)
    return check_manifest(raw, sig, certs, release_dir)


def check_manifest(raw: bytes, sig: bytes, certs: list[x509.Certificate],
                   release_dir: Path = Path(".")) -> tuple[dict, x509.Certificate]:
    """``manifest.json`` bytes and their ``manifest.json.p7s``: the signature must be exactly the form
    :func:`sign` writes and verify with one of ``certs`` (checked before the JSON is even parsed),
    and its signer must be the manifest key the manifest names. Returns (manifest, signer)."""
    try:
        signer = verify_signature(sig, raw, certs)
    except SegwayError as e:
        raise type(e)(f"{release_dir / SIGNATURE}: {e}") from None
    doc = parse(raw, release_dir / MANIFEST)
    keys, name = doc.get("keys"), doc.get("manifest_key")
    mkey = keys.get(name) if isinstance(keys, dict) and isinstance(name, str) else None
    if not isinstance(mkey, dict) or mkey.get("certificate_sha256") != cert_fingerprint(signer):
        raise VerificationError("the manifest was signed by a certificate other than its manifest key's")
    return doc, signer


def listed_outputs(doc: dict) -> dict[str, str]:
    """The manifest's ``outputs`` (release-relative file name → sha256), each name checked to be a file
    inside the release other than the manifest files."""
    listed = doc.get("outputs", {})
    if not isinstance(listed, dict):
        raise InputError("the manifest's outputs are not a mapping")
    for rel, digest in listed.items():
        parts = rel.split("/")
        if (not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts)
                or rel in (MANIFEST, SIGNATURE)):
            raise VerificationError(f"the manifest lists {rel!r}, which is not a file name inside the release")
        if not isinstance(digest, str):
            raise VerificationError(f"the manifest's sha256 of {rel} is not a string")
    return listed
