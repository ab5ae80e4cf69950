"""The audit log's TPM anchor: every entry hash is extended into an NV index of the TPM.

The hash chain alone cannot show that entries were cut from the end, or that the whole state directory
was put back to an older copy: what is left still verifies. The anchor holds
A_n = SHA-256(A_(n-1) || hash_n) with A_0 = 32 zero bytes, in TPM NV memory the state directory cannot
roll back; a verifier recomputes A_n from an exported log and compares it with a TPM2_NV_Certify of the
index signed by the attestation key and fresh for its nonce.

Entries are extended after their transaction commits (under the store lock, so in sequence order). A
crash between the commit and the extend leaves the anchor behind the log by committed, signed entries;
reconcile() catches up. An anchor that matches no prefix of the log means entries were removed.
"""
from __future__ import annotations

import hashlib
import logging

from tpm2_pytss.constants import TPM2_ALG, TPM2_NT, TPMA_NV

from segway_kms.errors import FailedPrecondition

log = logging.getLogger(__name__)
ZERO = bytes(32)
# An extend-type NV index only the owner hierarchy can write or read, in the owner range of the TCG
# handle registry (0x01800000-0x01BFFFFF).
DEFAULT_ANCHOR_INDEX = 0x01800100
ANCHOR_ATTRIBUTES = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA | (TPM2_NT.EXTEND << TPMA_NV.TPM2_NT_SHIFT)
# Attributes the TPM sets and clears itself as the index is used.
_STATE_ATTRIBUTES = TPMA_NV.WRITTEN | TPMA_NV.READLOCKED | TPMA_NV.WRITELOCKED


def is_anchor_index(nv_public) -> bool:
    """Whether a TPMS_NV_PUBLIC describes an index defined as the audit anchor (any index, any state)."""
    return (nv_public.attributes & ~_STATE_ATTRIBUTES == ANCHOR_ATTRIBUTES and nv_public.dataSize == 32
            and nv_public.nameAlg == TPM2_ALG.SHA256)


def anchor_values(entry_hashes: list[bytes]) -> list[bytes]:
    """[A_0, A_1, ..., A_n] for the given entry hashes."""
    values = [ZERO]
    for h in entry_hashes:
        values.append(hashlib.sha256(values[-1] + h).digest())
    return values


class AuditAnchor:
    def __init__(self, backend, store, index: int):
        self.backend = backend
        self.store = store
        self.index = index
        self._behind = True  # until reconcile() has compared the TPM with the log
        self.broken = False  # the log lost entries: stop extending, keep certifying so verifiers see it

    def _entry_hashes(self) -> list[bytes]:
        return [bytes.fromhex(r[0]) for r in self.store.query("SELECT hash FROM audit ORDER BY seq")]

    def reconcile(self) -> None:
        """Bring the anchor up to the log's last entry; FailedPrecondition if the log lost entries."""
        with self.store.lock:
            hashes = self._entry_hashes()
            current = self.backend.anchor_read(self.index)
            values = anchor_values(hashes)
            if current is None:
                done = 0
                if hashes:
                    log.warning("anchoring %d existing audit entries in NV index 0x%08x", len(hashes), self.index)
            elif current in values:
                done = values.index(current)
            else:
                self.broken = True
                raise FailedPrecondition(
                    f"the audit log does not match its TPM anchor (NV index 0x{self.index:08x}): entries were "
                    "removed or the state directory was rolled back")
            for h in hashes[done:]:
                self.backend.anchor_extend(self.index, h)
            self._behind = False

    def extend(self, entry_hash: bytes) -> None:
        """Called after the entry's transaction committed, with the store lock held."""
        if self.broken:
            return
        if self._behind:
            self.reconcile()  # includes this entry: it is committed already
            return
        try:
            self.backend.anchor_extend(self.index, entry_hash)
        except Exception:
            self._behind = True  # the next extend (or a restart) catches up
            raise

    def certify(self, nonce: bytes) -> dict:
        """The anchor certified by the TPM; call with the store lock held so it matches the log's end."""
        if self._behind and not self.broken:
            self.reconcile()
        return self.backend.anchor_certify(self.index, nonce)
