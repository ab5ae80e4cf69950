"""``segway-sign release verify``: check a release offline against trusted certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..errors import InputError, SegwayError, VerificationError
from . import manifest as mf
from . import steps as registry

from .steps.tfa import check_stm32_root_of_trust
from .steps.verity import check_carried_envs


@dataclass
class VerifiedRelease:
    manifest: dict
    signer: x509.Certificate
    files: int


def verify_release(release_dir: Path, certs: list[x509.Certificate]) -> VerifiedRelease:
    """Manifest signature, every file's sha256, no unlisted files, then each step's own check."""
    try:
        return _verify_release(Path(release_dir), certs)
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{Path(release_dir) / mf.MANIFEST} is malformed ({type(e).__name__}: {e})") from None


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
    doc, signer = mf.read_verified(release_dir, certs)
    listed = mf.listed_outputs(doc)
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
        try:
            stype.verify(registry.VerifyContext(record["id"], release_dir / record["id"], record, certs))
        except SegwayError as e:
            raise VerificationError(f"step '{record['id']}': {e}") from None
    # A verity env inside a FIT is read by the initramfs: it must be the bytes the verity step checked.
    check_carried_envs(release_dir, doc)
    # STM32MP1: the FIP's root-of-trust key is BL2's (one PKH in OTP).
    check_stm32_root_of_trust(release_dir, doc)
    return VerifiedRelease(doc, signer, len(listed))
