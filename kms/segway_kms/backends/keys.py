"""Backend keys as `cryptography` private keys, so X.509 builders can sign with them directly.

cryptography's builders check the key type with isinstance and then call `key.sign()` through Python,
so subclasses of the private-key ABCs whose `sign()` hashes on the host and sends the digest to the
backend work without any key material in this process.
"""
from __future__ import annotations

import functools
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from segway_kms.backends.base import HASHES, hash_for_digest
from segway_kms.errors import InvalidArgument

SignDigest = Callable[[bytes, str], bytes]  # (digest, scheme) -> signature


def _host_digest(data: bytes, algorithm) -> bytes:
    if isinstance(algorithm, utils.Prehashed):
        return data
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


class _NoPrivateMaterial:
    def private_numbers(self):
        raise InvalidArgument("the private key never leaves the backend")

    def private_bytes(self, *args, **kwargs):
        raise InvalidArgument("the private key never leaves the backend")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class BackendEcKey(_NoPrivateMaterial, ec.EllipticCurvePrivateKey):
    def __init__(self, sign_digest: SignDigest, public: ec.EllipticCurvePublicKey):
        self._sign_digest = sign_digest
        self._public = public

    @property
    def curve(self):
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self):
        return self._public

    def exchange(self, algorithm, peer_public_key):
        raise InvalidArgument("backend keys are signing keys")

    def sign(self, data, signature_algorithm):
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise InvalidArgument("EC backend keys sign with ECDSA only")
        return self._sign_digest(_host_digest(data, signature_algorithm.algorithm), "ecdsa")


class BackendRsaKey(_NoPrivateMaterial, rsa.RSAPrivateKey):
    def __init__(self, sign_digest: SignDigest, public: rsa.RSAPublicKey):
        self._sign_digest = sign_digest
        self._public = public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self):
        return self._public

    def decrypt(self, ciphertext, padding):
        raise InvalidArgument("backend keys are signing keys")

    def sign(self, data, pad, algorithm):
        scheme = "pss" if isinstance(pad, padding.PSS) else "pkcs1v15"
        return self._sign_digest(_host_digest(data, algorithm), scheme)


@functools.lru_cache(maxsize=1024)
def load_public(public_der: bytes):
    """Parsed public keys are immutable; caching them keeps the per-signature check cheap."""
    return serialization.load_der_public_key(public_der)


def private_key_for(sign_digest: SignDigest, public_der: bytes):
    public = load_public(public_der)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return BackendEcKey(sign_digest, public)
    return BackendRsaKey(sign_digest, public)


# Signature-algorithm objects per hash, built once: the per-signature check runs on every Sign.
_PREHASHED = {name: utils.Prehashed(cls()) for name, cls in HASHES.items()}
_ECDSA = {name: ec.ECDSA(alg) for name, alg in _PREHASHED.items()}
_PSS = {name: padding.PSS(padding.MGF1(cls()), cls.digest_size) for name, cls in HASHES.items()}
_PKCS1V15 = padding.PKCS1v15()


def verify_digest(public_der: bytes, digest: bytes, signature: bytes, scheme: str) -> bool:
    """Check a signature over a precomputed digest with the public key alone."""
    public = load_public(public_der)
    hash_name = hash_for_digest(digest)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, digest, _ECDSA[hash_name])
        elif scheme == "pss":
            public.verify(signature, digest, _PSS[hash_name], _PREHASHED[hash_name])
        else:
            public.verify(signature, digest, _PKCS1V15, _PREHASHED[hash_name])
    except InvalidSignature:
        return False
    return True
