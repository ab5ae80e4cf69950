"""Software backend for development only: keys are PEM files in the state directory.

It exists so the API can be exercised on a laptop without a TPM; the daemon logs a warning when it is
used and refuses it outright under `profile: release`.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from segway_kms.backends.base import HASHES, check_algorithm, hash_for_digest
from segway_kms.errors import ConfigError, NotFound
from segway_kms.fsutil import atomic_write

log = logging.getLogger(__name__)

_CURVES = {"EC_P256": ec.SECP256R1, "EC_P384": ec.SECP384R1}


class SoftwareBackend:
    name = "software"
    supports_attestation = False

    def __init__(self, key_dir: Path, release: bool):
        if release:
            raise ConfigError("the software backend is for development only and is refused under profile: release")
        log.warning("software backend in use: keys are plain files on disk, development only")
        self._dir = Path(key_dir)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    def _path(self, ref: bytes) -> Path:
        return self._dir / (ref.decode("ascii") + ".pem")

    def create_key(self, algorithm: str, *, persistent: bool = False):
        check_algorithm(algorithm)
        if algorithm in _CURVES:
            key = ec.generate_private_key(_CURVES[algorithm]())
        else:
            key = rsa.generate_private_key(65537, int(algorithm.split("_")[1]))
        ref = secrets.token_hex(16).encode()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        atomic_write(self._path(ref), pem, mode=0o600)
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return ref, public

    def _load(self, ref: bytes):
        try:
            return serialization.load_pem_private_key(self._path(ref).read_bytes(), None)
        except FileNotFoundError:
            raise NotFound("key material missing from the software backend") from None

    def sign_digest(self, ref: bytes, algorithm: str, digest: bytes, scheme: str) -> bytes:
        key = self._load(ref)
        hash_cls = HASHES[hash_for_digest(digest)]
        pre = utils.Prehashed(hash_cls())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(digest, ec.ECDSA(pre))
        if scheme == "pss":
            return key.sign(digest, padding.PSS(padding.MGF1(hash_cls()), len(digest)), pre)
        return key.sign(digest, padding.PKCS1v15(), pre)

    def destroy_key(self, ref: bytes) -> None:
        try:
            os.unlink(self._path(ref))
        except FileNotFoundError:
            pass

    def random(self, length: int) -> bytes:
        return secrets.token_bytes(length)

    def healthy(self) -> bool:
        return self._dir.is_dir()

    def close(self) -> None:
        pass
