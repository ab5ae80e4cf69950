"""``segway-sign release verify``: check a release offline against trusted certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..errors import InputError, SegwayError, VerificationError
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


def verify_manifest(release_dir: Path, certs: list[x509.Certificate]) -> tuple[dict, x509.Certificate]:
    """The release's manifest, once its signature is checked (see check_manifest)."""
    raw = mf.read_regular(release_dir / mf.MANIFEST, mf.MAX_MANIFEST)
    sig = mf.read_regular(release_dir / mf.SIGNATURE, mf.MAX_SIGNATURE)
    return check_manifest(raw, sig, certs, release_dir)


def check_manifest(raw: bytes, sig: bytes, certs: list[x509.Certificate],
                   release_dir: Path = Path(".")) -> tuple[dict, x509.Certificate]:
    """``manifest.json`` bytes and their ``manifest.json.p7s``: the signature must be exactly the form
    ``manifest.sign`` writes and verify with one of ``certs`` (checked before the JSON is even
    parsed), and its signer must be the manifest key the manifest names. Returns (manifest, signer)."""
    try:
        signer = mf.verify_signature(sig, raw, certs)
    except SegwayError as e:
        raise type(e)(f"{release_dir / mf.SIGNATURE}: {e}") from None
    doc = mf.parse(raw, release_dir / mf.MANIFEST)
    keys, name = doc.get("keys"), doc.get("manifest_key")
    mkey = keys.get(name) if isinstance(keys, dict) and isinstance(name, str) else None
    if not isinstance(mkey, dict) or mkey.get("certificate_sha256") != mf.cert_fingerprint(signer):
        raise VerificationError("the manifest was signed by a certificate other than its manifest key's")
    return doc, signer


def _listed_outputs(doc: dict) -> dict[str, str]:
    listed = doc.get("outputs", {})
    if not isinstance(listed, dict):
        raise InputError("the manifest's outputs are not a mapping")
    for rel, digest in listed.items():
        parts = rel.split("/")
        if (not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts)
                or rel in (mf.MANIFEST, mf.SIGNATURE)):
            raise VerificationError(f"the manifest lists {rel!r}, which is not a file name inside the release")
        if not isinstance(digest, str):
            raise VerificationError(f"the manifest's sha256 of {rel} is not a string")
    return listed


def _present_files(release_dir: Path) -> set[str]:
    """Every file in the release; anything but regular files and directories (a symlink, a FIFO, a
    device) is refused: it is either not what was signed or would block the reader."""
    present = set()
    for p in release_dir.rglob("*"):
        rel = p.relative_to(release_dir).as_posix()
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise VerificationError(f"{rel} is not a regular file or directory")
        if p.is_file():
            present.add(rel)
    return present


def _verify_release(release_dir: Path, certs: list[x509.Certificate]) -> VerifiedRelease:
    doc, signer = verify_manifest(release_dir, certs)
    listed = _listed_outputs(doc)
    present = _present_files(release_dir)
    extra = present - set(listed) - {mf.MANIFEST, mf.SIGNATURE}
    if extra:
        raise VerificationError(f"files not in the manifest: {', '.join(sorted(extra))}")
    for rel, digest in sorted(listed.items()):
        path = release_dir / rel
        if rel not in present:
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
    # A verity env inside a FIT is read by the initramfs: it must be the bytes the verity step checked.
    registry.verity.check_carried_envs(release_dir, doc)
    return VerifiedRelease(doc, signer, len(listed))
