"""Offline verification of an exported audit log: chain, signatures, sequence continuity."""
from __future__ import annotations

import base64
import binascii
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from segway_kms.audit.chain import FIELDS, GENESIS, entry_hash


def _check_signature(public, digest: bytes, signature: bytes) -> bool:
    pre = utils.Prehashed(hashes.SHA256())
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, digest, ec.ECDSA(pre))
        else:
            public.verify(signature, digest, padding.PKCS1v15(), pre)
    except InvalidSignature:
        return False
    return True


def verify_log(lines: list[str], public_key_pem: bytes, expect_head: str | None = None,
               first_seq: int = 1) -> list[str]:
    """Return the list of problems found (empty when the log is intact).

    The chain starts at seq 1 with the genesis hash; an export from the middle (first_seq > 1) is checked
    from its first entry on. Truncation at the tail is only detectable against a known head hash (expect_head).
    """
    public = serialization.load_pem_public_key(public_key_pem)
    problems = []
    prev_hash, prev_seq = None, None
    entries = [ln for ln in lines if ln.strip()]
    if not entries:
        return ["the audit log is empty"]
    for lineno, line in enumerate(entries, 1):
        try:
            entry = json.loads(line)
            missing = [f for f in FIELDS + ("hash", "sig") if f not in entry]
            if missing:
                problems.append(f"entry {lineno}: missing fields {', '.join(missing)}")
                continue
        except (json.JSONDecodeError, TypeError):
            problems.append(f"entry {lineno}: not valid JSON")
            continue
        seq = entry["seq"]
        if prev_seq is None:
            if seq != first_seq:
                problems.append(f"the log starts at seq {seq}, not {first_seq} (entries removed from the start)")
            if seq == 1 and entry["prev"] != GENESIS:
                problems.append("entry seq 1 does not start from the genesis hash")
        else:
            if seq != prev_seq + 1:
                problems.append(f"entry {lineno}: seq {seq} follows seq {prev_seq} (gap or reordering)")
            if entry["prev"] != prev_hash:
                problems.append(f"entry seq {seq}: prev does not match the hash of the entry before it")
        computed = entry_hash(entry)
        if computed != entry["hash"]:
            problems.append(f"entry seq {seq}: content does not match its hash (edited)")
        try:
            signature = base64.b64decode(entry["sig"], validate=True)
            if not _check_signature(public, bytes.fromhex(entry["hash"]), signature):
                problems.append(f"entry seq {seq}: bad signature")
        except (binascii.Error, ValueError):
            problems.append(f"entry seq {seq}: malformed signature or hash")
        prev_hash, prev_seq = entry["hash"], seq
    if expect_head is not None and prev_hash != expect_head:
        problems.append("the last entry is not the expected head (entries removed from the end)")
    return problems


def verify_anchor(lines: list[str], anchor: dict, nonce: bytes, pinned_ak_pem: bytes) -> list[str]:
    """Check an audit log against its TPM anchor (audit/anchor.py): the NV_Certify is signed by the pinned
    AK for this nonce, covers the segway anchor index, and holds the value recomputed from every entry."""
    from tpm2_pytss.constants import TPM2_ST
    from tpm2_pytss.types import TPM2B_NV_PUBLIC

    from segway_kms.attestation.verify import check_ak, check_signed_attest
    from segway_kms.audit.anchor import anchor_values, is_anchor_index

    problems: list[str] = []
    try:
        hashes = []
        for line in (ln for ln in lines if ln.strip()):
            entry = json.loads(line)
            if not hashes and entry.get("seq") != 1:
                return ["the anchor covers the whole log: export it from seq 1"]
            hashes.append(bytes.fromhex(entry["hash"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return ["the log has malformed entries: check it without the anchor first"]
    ak = check_ak(anchor["ak_public_area"], pinned_ak_pem, problems)
    attest = check_signed_attest(anchor["certify_info"], anchor["certify_signature"], ak, TPM2_ST.ATTEST_NV, nonce,
                                 "anchor", problems)
    nv_public, _ = TPM2B_NV_PUBLIC.unmarshal(anchor["nv_public_area"])
    nv = nv_public.nvPublic
    if nv.nvIndex != anchor["nv_index"] or not is_anchor_index(nv):
        problems.append("anchor: the NV index is not a segway audit anchor")
    if attest is not None:
        certified = attest.attested.nv
        if bytes(certified.indexName) != bytes(nv.get_name()):
            problems.append("anchor: the certified NV index is not the one described")
        if certified.offset != 0 or bytes(certified.nvContents) != anchor_values(hashes)[-1]:
            problems.append("anchor: the TPM's value does not match the log (entries removed, added or changed)")
    return problems
