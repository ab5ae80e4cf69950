"""PKCS#11 backend (python-pkcs11): OP-TEE's PKCS#11 TA through libckteec on the device, SoftHSM in tests.

python-pkcs11 initialises the module without OS locking and releases the GIL on every call, so every
call into the module goes through one process-wide lock (SoftHSM corrupts its heap otherwise), granted in
arrival order (fifolock.py) so concurrent requests wait their turn.
Only transport-safe mechanisms are used: host hash + CKM_ECDSA, CKM_RSA_PKCS with a DigestInfo, and
CKM_RSA_PKCS_PSS with explicit parameters.
"""
from __future__ import annotations

import logging
import os
import secrets

import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_ecdsa_signature, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from segway_kms.backends.base import DIGEST_INFO, check_algorithm, hash_for_digest
from segway_kms.backends.fifolock import FifoRLock
from segway_kms.errors import BackendError, ConfigError, NotFound

log = logging.getLogger(__name__)
_LOCK = FifoRLock()  # one lock for the whole process: the module may run without locking
_CURVES = {"EC_P256": "secp256r1", "EC_P384": "secp384r1"}
_REQUIRED_MECHANISMS = (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA, Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                        Mechanism.RSA_PKCS, Mechanism.RSA_PKCS_PSS)
_PSS = {"sha256": (Mechanism.SHA256, pkcs11.MGF.SHA256), "sha384": (Mechanism.SHA384, pkcs11.MGF.SHA384),
        "sha512": (Mechanism.SHA512, pkcs11.MGF.SHA512)}


def read_pin(cfg: dict) -> str:
    """The PIN comes from a file or an environment variable, never from the configuration itself."""
    if cfg.get("pin_file"):
        try:
            with open(cfg["pin_file"]) as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the PIN file {cfg['pin_file']}: {exc.strerror}") from None
    if cfg.get("pin_env"):
        pin = os.environ.get(cfg["pin_env"])
        if pin is None:
            raise ConfigError(f"environment variable {cfg['pin_env']} (the token PIN) is not set")
        return pin
    raise ConfigError("backend: set pin_file or pin_env for the PKCS#11 token")


class Pkcs11Backend:
    name = "pkcs11"
    supports_attestation = False

    def __init__(self, cfg: dict):
        module = cfg.get("module")
        label = cfg.get("token_label")
        if not module or not label:
            raise ConfigError("backend: pkcs11 needs 'module' and 'token_label'")
        self._pin = read_pin(cfg)
        self._label = label
        self._serial = cfg.get("token_serial")
        with _LOCK:
            try:
                self._lib = pkcs11.lib(module)
            except RuntimeError as exc:
                raise ConfigError(f"cannot load the PKCS#11 module {module}: {exc}") from None
            self._open()

    def _open(self):
        try:
            kwargs = {"token_label": self._label}
            if self._serial:
                kwargs["token_serial"] = self._serial.encode()
            token = self._lib.get_token(**kwargs)
            self._session = token.open(rw=True, user_pin=self._pin)
            offered = set(token.slot.get_mechanisms())
            missing = [m.name for m in _REQUIRED_MECHANISMS if m not in offered]
            if missing:
                log.warning("token %r lacks mechanisms %s; keys needing them will fail", self._label,
                            ", ".join(missing))
        except pkcs11.exceptions.PKCS11Error as exc:
            raise BackendError(f"cannot open the token {self._label!r}: {exc.__class__.__name__}") from None
        self._keys: dict[bytes, object] = {}

    def _call(self, fn):
        """Run fn(session) under the lock; reopen the session once on a lost session or device."""
        with _LOCK:
            try:
                return fn(self._session)
            except (pkcs11.exceptions.SessionHandleInvalid, pkcs11.exceptions.DeviceError,
                    pkcs11.exceptions.SessionClosed):
                self._open()
                return fn(self._session)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise BackendError(f"PKCS#11 error: {exc.__class__.__name__}") from None

    def create_key(self, algorithm: str, *, persistent: bool = False):
        check_algorithm(algorithm)
        key_id = secrets.token_bytes(16)
        private_template = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.PRIVATE: True}

        def generate(session):
            if algorithm in _CURVES:
                params = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[algorithm])}, local=True)
                pub, _priv = params.generate_keypair(store=True, id=key_id, label=key_id.hex(),
                                                     capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                                                     private_template=private_template)
                return encode_ec_public_key(pub)
            pub, _priv = session.generate_keypair(KeyType.RSA, int(algorithm.split("_")[1]), store=True, id=key_id,
                                                  label=key_id.hex(),
                                                  capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                                                  private_template=private_template)
            return encode_rsa_public_key(pub)

        raw = self._call(generate)
        public = serialization.load_der_public_key(raw).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return key_id, public

    def _private(self, session, ref: bytes):
        key = self._keys.get(ref)
        if key is None:
            try:
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=ref)
            except pkcs11.exceptions.NoSuchKey:
                raise NotFound("key material missing from the PKCS#11 token") from None
            self._keys[ref] = key
        return key

    def key_attributes(self, ref: bytes) -> dict:
        def read(session):
            key = self._private(session, ref)
            return {a.name: bool(key[a]) for a in (Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                                                    Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE,
                                                    Attribute.TOKEN)}
        return self._call(read)

    def sign_digest(self, ref: bytes, algorithm: str, digest: bytes, scheme: str) -> bytes:
        hash_name = hash_for_digest(digest)

        def sign(session):
            key = self._private(session, ref)
            if algorithm in _CURVES:
                return encode_ecdsa_signature(key.sign(digest, mechanism=Mechanism.ECDSA))
            if scheme == "pss":
                mech_hash, mgf = _PSS[hash_name]
                return key.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS,
                                mechanism_param=(mech_hash, mgf, len(digest)))
            return key.sign(DIGEST_INFO[hash_name] + digest, mechanism=Mechanism.RSA_PKCS)

        try:
            return self._call(sign)
        except NotFound:
            self._keys.pop(ref, None)
            raise

    def destroy_key(self, ref: bytes) -> None:
        def destroy(session):
            for obj in list(session.get_objects({Attribute.ID: ref})):
                obj.destroy()
        self._keys.pop(ref, None)
        self._call(destroy)

    def random(self, length: int) -> bytes:
        return self._call(lambda s: s.generate_random(length * 8))

    def healthy(self) -> bool:
        try:
            self._call(lambda s: s.generate_random(64))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not serving"
            return False

    def close(self) -> None:
        with _LOCK:
            try:
                self._session.close()
            except pkcs11.exceptions.PKCS11Error:
                pass
