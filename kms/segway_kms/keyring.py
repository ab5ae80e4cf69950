"""Key lifecycle on top of a backend and the store: generate, rotate, disable, destroy, sign, verify."""
from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import time

from segway_kms.backends.base import check_algorithm, hash_for_digest
from segway_kms.backends.keys import private_key_for, verify_digest
from segway_kms.errors import AlreadyExists, BackendError, FailedPrecondition, InvalidArgument, NotFound, clip

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # whole name (fullmatch)
SYSTEM_TENANT = "_system"  # internal keys (CA, audit); clients cannot name it
USAGES = ("sign", "verify")
MAX_CACHED = 1024  # key records kept in memory (a few hundred bytes each)


@dataclasses.dataclass(frozen=True)
class Version:
    version: int
    state: str
    public_der: bytes
    created: int
    ref: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """A key as last committed. Frozen: one record is shared by every request that reads it."""
    name: str
    tenant: str
    algorithm: str
    usage: tuple[str, ...]
    state: str
    primary_version: int
    created: int
    expires: int
    versions: tuple[Version, ...]

    def version(self, number: int = 0) -> Version:
        number = number or self.primary_version
        for v in self.versions:
            if v.version == number:
                return v
        raise NotFound(f"key {self.name} has no version {number}")


def tenant_of(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"key name must be '<tenant>/<name>' (lowercase tenant), not '{clip(name)}'")
    return name.split("/", 1)[0]


def scheme_for(algorithm: str, requested: str) -> str:
    """Map the API scheme to the backend one and refuse combinations the key type cannot do."""
    ec = algorithm.startswith("EC")
    if requested in ("", "default"):
        return "ecdsa" if ec else "pkcs1v15"
    if ec != (requested == "ecdsa"):
        raise InvalidArgument(f"signature scheme {requested} does not fit a {algorithm} key")
    return requested


class Keyring:
    """Keys on a backend, their state in the store.

    Records are cached in memory: a Sign reads no SQLite. The cache stays consistent because the store has
    one writer, this process (Store refuses a second process on the same database), every change of a key
    goes through this class in a store transaction that drops the key's record under the store lock, and a
    record is read and cached under that same lock, so no reader can put back a record older than a commit.
    """

    def __init__(self, backend, store, audit=None):
        self.backend = backend
        self.store = store
        self.audit = audit  # set once the audit key exists
        self._records: dict[str, KeyRecord] = {}

    # -- reads ----------------------------------------------------------------------------------------------
    def _load(self, name: str) -> KeyRecord:
        record = self._records.get(name)
        if record is not None:
            return record
        with self.store.lock:
            record = self._read(name)
            if len(self._records) >= MAX_CACHED:
                self._records.pop(next(iter(self._records)), None)  # the oldest entry
            self._records[name] = record
        return record

    def _forget(self, name: str) -> None:
        """Drop a cached record; call inside the transaction that changes the key (the store lock is held)."""
        self._records.pop(name, None)

    def _read(self, name: str) -> KeyRecord:
        rows = self.store.query("SELECT name, tenant, algorithm, usage, state, primary_version, created, expires "
                                "FROM keys WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no key named {name}")
        r = rows[0]
        versions = [Version(version=v[0], state=v[1], public_der=v[2], created=v[3], ref=v[4]) for v in
                    self.store.query("SELECT version, state, public_der, created, ref FROM key_versions "
                                     "WHERE name = ? ORDER BY version", (name,))]
        return KeyRecord(name=r[0], tenant=r[1], algorithm=r[2], usage=tuple(json.loads(r[3])), state=r[4],
                         primary_version=r[5], created=r[6], expires=r[7], versions=tuple(versions))

    def get(self, name: str) -> KeyRecord:
        tenant_of(name)
        return self._load(name)

    def get_system(self, name: str) -> KeyRecord:
        return self._load(f"{SYSTEM_TENANT}/{name}")

    def list(self, tenant: str) -> list[KeyRecord]:
        names = [r[0] for r in self.store.query("SELECT name FROM keys WHERE tenant = ? ORDER BY name", (tenant,))]
        return [self._load(n) for n in names]

    # -- mutations ------------------------------------------------------------------------------------------
    def _audit(self, db, principal, op, target, params):
        if self.audit is not None:
            self.audit.append(db, principal, op, target, params)

    def _create(self, principal: str, name: str, tenant: str, algorithm: str, usage: list[str], expires: int,
                persistent: bool = False, extra_audit=None) -> KeyRecord:
        check_algorithm(algorithm)
        usage = list(dict.fromkeys(usage)) or ["sign", "verify"]  # each usage once, in the order given
        bad = [u for u in usage if u not in USAGES]
        if bad:
            raise InvalidArgument(f"unknown key usage '{clip(bad[0])}' (use sign, verify)")
        if expires and expires <= time.time():
            raise InvalidArgument("expiry lies in the past")
        if self.store.query("SELECT 1 FROM keys WHERE name = ?", (name,)):
            raise AlreadyExists(f"a key named {name} exists")
        ref, public = self.backend.create_key(algorithm, persistent=persistent)
        now = int(time.time())
        try:
            with self.store.transaction() as db:
                self._forget(name)
                db.execute("INSERT INTO keys VALUES (?, ?, ?, ?, 'ENABLED', 1, ?, ?)",
                           (name, tenant, algorithm, json.dumps(usage), now, int(expires)))
                db.execute("INSERT INTO key_versions VALUES (?, 1, ?, ?, 'ENABLED', ?)", (name, ref, public, now))
                self._audit(db, principal, "GenerateKey", name, {"algorithm": algorithm, "usage": usage,
                                                                 "expires": int(expires)})
                if extra_audit:
                    extra_audit(db)
        except sqlite3.IntegrityError:
            self.backend.destroy_key(ref)
            raise AlreadyExists(f"a key named {name} exists") from None
        except Exception:
            self.backend.destroy_key(ref)
            raise
        return self._load(name)

    def generate(self, principal: str, name: str, algorithm: str, usage=(), expires: int = 0,
                 extra_audit=None) -> KeyRecord:
        return self._create(principal, name, tenant_of(name), algorithm, list(usage), expires,
                            extra_audit=extra_audit)

    def generate_system(self, name: str, algorithm: str, persistent: bool) -> KeyRecord:
        return self._create("segway-kmsd", f"{SYSTEM_TENANT}/{name}", SYSTEM_TENANT, algorithm, ["sign", "verify"],
                            0, persistent=persistent)

    def rotate(self, principal: str, name: str) -> KeyRecord:
        record = self.get(name)
        self._usable(record, for_signing=False)
        ref, public = self.backend.create_key(record.algorithm)
        new = record.versions[-1].version + 1
        try:
            with self.store.transaction() as db:
                self._forget(name)
                db.execute("INSERT INTO key_versions VALUES (?, ?, ?, ?, 'ENABLED', ?)",
                           (name, new, ref, public, int(time.time())))
                db.execute("UPDATE keys SET primary_version = ? WHERE name = ?", (new, name))
                self._audit(db, principal, "RotateKey", name, {"version": new})
        except Exception:
            self.backend.destroy_key(ref)
            raise
        return self._load(name)

    def set_state(self, principal: str, name: str, state: str) -> KeyRecord:
        record = self.get(name)
        if record.state == "DESTROYED":
            raise FailedPrecondition(f"key {name} is destroyed")
        op = {"DISABLED": "DisableKey", "ENABLED": "EnableKey"}[state]
        with self.store.transaction() as db:
            self._forget(name)
            db.execute("UPDATE keys SET state = ? WHERE name = ?", (state, name))
            self._audit(db, principal, op, name, {})
        return self._load(name)

    def destroy(self, principal: str, name: str) -> KeyRecord:
        record = self.get(name)
        if record.state == "DESTROYED":
            raise FailedPrecondition(f"key {name} is already destroyed")
        # Record the destruction first: a crash after this leaves unreachable material, never a live
        # key the audit log calls destroyed.
        with self.store.transaction() as db:
            self._forget(name)
            db.execute("UPDATE keys SET state = 'DESTROYED' WHERE name = ?", (name,))
            # forget the backend references too: for the TPM they are the wrapped key blobs themselves
            db.execute("UPDATE key_versions SET state = 'DESTROYED', ref = X'' WHERE name = ?", (name,))
            self._audit(db, principal, "DestroyKey", name, {})
        for v in record.versions:
            try:
                self.backend.destroy_key(v.ref)
            except (BackendError, NotFound):
                pass
        return self._load(name)

    # -- use ------------------------------------------------------------------------------------------------
    @staticmethod
    def _usable(record: KeyRecord, for_signing: bool) -> None:
        if record.state != "ENABLED":
            raise FailedPrecondition(f"key {record.name} is {record.state.lower()}")
        if record.expires and record.expires <= time.time():
            raise FailedPrecondition(f"key {record.name} expired")
        if for_signing and "sign" not in record.usage:
            raise FailedPrecondition(f"key {record.name} is not allowed to sign")

    def signer(self, record: KeyRecord, version: int = 0):
        """A cryptography private key object that signs through the backend with the given version."""
        v = record.version(version)
        return private_key_for(lambda digest, scheme: self.sign_checked(record, v, digest, scheme), v.public_der)

    def sign_checked(self, record: KeyRecord, v: Version, digest: bytes, scheme: str) -> bytes:
        signature = self.backend.sign_digest(v.ref, record.algorithm, digest, scheme)
        # Never release a signature the public key does not accept.
        if not verify_digest(v.public_der, digest, signature, scheme):
            raise BackendError(f"the backend produced a signature that does not verify (key {record.name})")
        return signature

    def sign(self, name: str, version: int, digest: bytes, scheme: str) -> tuple[bytes, int]:
        record = self.get(name)
        self._usable(record, for_signing=True)
        v = record.version(version)  # NotFound for a version the key never had
        if v.version != record.primary_version:
            raise FailedPrecondition(f"version {v.version} of {name} is kept for verification only")
        hash_for_digest(digest)
        return self.sign_checked(record, v, digest, scheme_for(record.algorithm, scheme)), v.version

    def verify(self, name: str, version: int, digest: bytes, signature: bytes, scheme: str) -> bool:
        record = self.get(name)
        if record.state == "DESTROYED":
            raise FailedPrecondition(f"key {name} is destroyed")
        if "verify" not in record.usage:
            raise FailedPrecondition(f"key {name} is not allowed to verify")
        hash_for_digest(digest)
        return verify_digest(record.version(version).public_der, digest, signature,
                             scheme_for(record.algorithm, scheme))
