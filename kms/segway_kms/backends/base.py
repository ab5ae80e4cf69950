"""The one interface every key backend implements, and the algorithm vocabulary they share."""
from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography.hazmat.primitives import hashes

from segway_kms.errors import InvalidArgument

ALGORITHMS = ("EC_P256", "EC_P384", "RSA_2048", "RSA_3072")
# digest length -> hash name; digests are computed by the caller, the backend signs them as they are
DIGEST_HASHES = {32: "sha256", 48: "sha384", 64: "sha512"}
HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
# DER DigestInfo prefixes for RSASSA-PKCS1-v1_5 over an externally computed digest (RFC 8017 §9.2)
DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def hash_for_digest(digest: bytes) -> str:
    try:
        return DIGEST_HASHES[len(digest)]
    except KeyError:
        raise InvalidArgument(f"digest must be 32, 48 or 64 bytes, not {len(digest)}") from None


def digest(data: bytes, hash_name: str) -> bytes:
    return hashlib.new(hash_name, data).digest()


def check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"unsupported key algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})")
    return algorithm


class Backend(Protocol):
    """Keys are addressed by an opaque reference the backend returns at creation and the store keeps."""

    name: str
    supports_attestation: bool

    def create_key(self, algorithm: str, *, persistent: bool = False) -> tuple[bytes, bytes]:
        """Generate a non-exportable signing key; return (reference, SubjectPublicKeyInfo DER)."""

    def sign_digest(self, ref: bytes, algorithm: str, digest: bytes, scheme: str) -> bytes:
        """Sign a precomputed digest. scheme: "ecdsa" (DER result), "pkcs1v15" or "pss"."""

    def destroy_key(self, ref: bytes) -> None:
        """Delete the key material for good."""

    def random(self, length: int) -> bytes: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...
