"""Crypto helpers shared by the formats, the token layer, the PKI and the release: ECDSA signatures
as raw r||s and as DER, hash algorithms by name, SubjectPublicKeyInfo, certificates from bytes.

Only ``cryptography`` is used here; the keys on curves it lacks are in :mod:`segway_sign.raw_ec`.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
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


class CertificateError(ValueError):
    """Bytes that are not a usable X.509 certificate; ``str(err)`` is a one-line phrase that reads
    after the certificate's name ("is not a DER X.509 v1-v3 certificate", "has a malformed subject
    (...)")."""


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


# Loading a certificate parses only its outer structure: cryptography reads the subject, the issuer,
# the extensions and the public key when they are first used, and a malformed one raises there (a
# ValueError, DuplicateExtension or UnsupportedGeneralNameType), far from where the file was read.
# They are read once here instead. A public key of an algorithm or curve cryptography lacks
# (UnsupportedAlgorithm: e.g. brainpoolP256t1) is not malformed: the callers that need the key say so.
_LAZY_ERRORS = (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)
_LAZY_PARTS = (
    ("has a malformed subject", lambda cert: cert.subject),
    ("has a malformed issuer", lambda cert: cert.issuer),
    ("has malformed extensions", lambda cert: cert.extensions),
    ("holds an invalid public key", lambda cert: cert.public_key()),
)


def load_certificate_bytes(raw: bytes, pem: bool = False) -> x509.Certificate:
    """The DER X.509 (v1 to v3) certificate in ``raw``, every part of it parsed; CertificateError
    naming the problem otherwise. With ``pem``, bytes holding a ``-----BEGIN`` line are read as PEM."""
    try:
        if pem and b"-----BEGIN" in raw:
            cert = x509.load_pem_x509_certificate(raw)
        else:
            cert = x509.load_der_x509_certificate(raw)
    except (ValueError, x509.InvalidVersion):
        raise CertificateError("is not an X.509 certificate (PEM or DER)" if pem
                               else "is not a DER X.509 v1-v3 certificate") from None
    for problem, read in _LAZY_PARTS:
        try:
            read(cert)
        except UnsupportedAlgorithm:
            pass
        except _LAZY_ERRORS as err:
            raise CertificateError(f"{problem} ({_one_line(err)})") from None
    return cert


def parse_certificate(raw: bytes, pem: bool = False) -> x509.Certificate | None:
    """The DER X.509 (v1 to v3) certificate in ``raw``, every part of it parsed (see
    load_certificate_bytes), or None when it is not one. With ``pem``, bytes holding a
    ``-----BEGIN`` line are read as PEM instead."""
    try:
        return load_certificate_bytes(raw, pem)
    except CertificateError:
        return None
