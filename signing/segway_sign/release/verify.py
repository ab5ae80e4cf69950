"""``segway-sign release verify``: check a release offline against trusted certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..errors import InputError, SegwayError, VerificationError
from .. import cms
from . import manifest as mf
from . import steps as registry


@dataclass
class VerifiedRelease:
    manifest: dict
    signer: x509.Certificate
    files: int


def load_certs_dir(certs_dir: Path) -> list[x509.Certificate]:
    from .runner import load_cert

    certs_dir = Path(certs_dir)
    if not certs_dir.is_dir():
        raise InputError(f"certificates directory {certs_dir} does not exist")
    certs = [load_cert(p) for p in sorted(certs_dir.iterdir())
             if p.is_file() and p.suffix in (".pem", ".crt", ".der", ".cer")]
    if not certs:
        raise InputError(f"no certificates (*.pem, *.crt, *.der) in {certs_dir}")
    return certs


def verify_release(release_dir: Path, certs: list[x509.Certificate]) -> VerifiedRelease:
    """Manifest signature, every file's sha256, no unlisted files, then each step's own check."""
    try:
        return _verify_release(Path(release_dir), certs)
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{Path(release_dir) / mf.MANIFEST} is malformed ({type(e).__name__}: {e})") from None


def _verify_release(release_dir: Path, certs: list[x509.Certificate]) -> VerifiedRelease:
    doc, raw = mf.load(release_dir)
    try:
        sig = (release_dir / mf.SIGNATURE).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {release_dir / mf.SIGNATURE}: {e.strerror}") from None
    signer = cms.verify_detached(sig, raw, certs)
    mkey = doc["keys"].get(doc.get("manifest_key"), {})
    if mkey.get("certificate_sha256") != mf.cert_fingerprint(signer):
        raise VerificationError("the manifest was signed by a certificate other than its manifest key's")
    listed = doc.get("outputs", {})
    present = {p.relative_to(release_dir).as_posix() for p in release_dir.rglob("*") if p.is_file()}
    extra = present - set(listed) - {mf.MANIFEST, mf.SIGNATURE}
    if extra:
        raise VerificationError(f"files not in the manifest: {', '.join(sorted(extra))}")
    for rel, digest in sorted(listed.items()):
        path = release_dir / rel
        if not path.is_file():
            raise VerificationError(f"{rel} is listed in the manifest but missing")
        if mf.sha256_file(path) != digest:
            raise VerificationError(f"{rel}: sha256 differs from the manifest")
    for record in doc.get("steps", []):
        stype = registry.REGISTRY.get(record.get("type"))
        if stype is None:
            raise VerificationError(f"step '{record.get('id')}' has unknown type {record.get('type')!r}")
        if stype.verify is None:
            continue
        try:
            stype.verify(registry.VerifyContext(record["id"], release_dir / record["id"], record, certs))
        except SegwayError as e:
            raise VerificationError(f"step '{record['id']}': {e}") from None
    return VerifiedRelease(doc, signer, len(listed))
