"""Hash-chained, signed audit entries.

Each entry is a JSON object {seq, time, principal, op, target, params_digest, prev}; its hash is the
SHA-256 of the canonical JSON (sorted keys, no spaces) of exactly those fields, `prev` is the previous
entry's hash (64 zeros for the first), and `sig` is an ECDSA/RSA signature over that hash made by the audit
key inside the backend. Design reference: mingulov/pkcs11-proxy-ng crates/audit/src/chain.rs.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Callable

GENESIS = "0" * 64
FIELDS = ("seq", "time", "principal", "op", "target", "params_digest", "prev")


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def params_digest(params: dict) -> str:
    return hashlib.sha256(canonical(params)).hexdigest()


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(canonical({k: entry[k] for k in FIELDS})).hexdigest()


class AuditChain:
    """Appends entries inside the caller's store transaction; sign(digest) signs with the audit key.

    With an anchor (audit/anchor.py), each entry hash is extended into the TPM once the transaction commits.
    """

    def __init__(self, sign: Callable[[bytes], bytes], store=None, anchor=None):
        self._sign = sign
        self._store = store
        self.anchor = anchor

    def append(self, db, principal: str, op: str, target: str, params: dict) -> dict:
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        entry = {"seq": seq, "time": int(time.time()), "principal": principal, "op": op, "target": target,
                 "params_digest": params_digest(params), "prev": prev}
        entry["hash"] = entry_hash(entry)
        entry["sig"] = base64.b64encode(self._sign(bytes.fromhex(entry["hash"]))).decode()
        db.execute("INSERT INTO audit (seq, hash, entry) VALUES (?, ?, ?)",
                   (seq, entry["hash"], canonical(entry).decode()))
        if self.anchor is not None:
            anchor, digest = self.anchor, bytes.fromhex(entry["hash"])
            self._store.after_commit(lambda: anchor.extend(digest))
        return entry
