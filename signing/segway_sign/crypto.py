"""Crypto helpers shared by the formats, the token layer, the PKI and the release: ECDSA signatures
as raw r||s and as DER, hash algorithms by name, SubjectPublicKeyInfo, certificates from bytes.

Only ``cryptography`` is used here; the keys on curves it lacks are in :mod:`segway_sign.raw_ec`.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

# Hash name (as FIT and CMS spell it) -> cryptography algorithm class.
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def ecdsa_raw(der: bytes, size: int) -> bytes:
    """The raw r||s of a DER ECDSA signature, each half ``size`` bytes big-endian (leading zeros kept:
    an r or s below 2**(8*size-8) keeps its place)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def ecdsa_der(raw: bytes) -> bytes:
    """The DER ECDSA signature of a raw r||s (two equal halves)."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def spki_der(public_key) -> bytes:
    """A public key's SubjectPublicKeyInfo (DER): what keys and certificates are compared by."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_pem(public_key) -> bytes:
    """A public key's SubjectPublicKeyInfo as a PEM ``PUBLIC KEY``."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_certificate(raw: bytes, pem: bool = False) -> x509.Certificate | None:
    """The DER X.509 (v1 to v3) certificate in ``raw``, or None when it is not one. With ``pem``, bytes
    holding a ``-----BEGIN`` line are read as PEM instead."""
    try:
        if pem and b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, x509.InvalidVersion):
        return None
