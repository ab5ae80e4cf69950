"""Detached CMS / PKCS#7 signatures: made with cryptography, checked with asn1crypto + cryptography.

Used for the dm-verity root-hash signature (no signed attributes, no certificates: the form the
kernel's ``verify_pkcs7_signature`` takes) and for the release manifest signature (no signed
attributes, the signer's certificate only).

``verify_exact`` accepts only the one encoding ``sign_detached`` writes: it rebuilds that encoding
from the trusted certificate and the signature value and compares bytes, so no field outside the
signature value can change unnoticed (see ``canonical_signed_data``).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from .crypto import HASHES
from .errors import InputError, VerificationError

_DIGESTS = ("sha256", "sha384", "sha512")  # the digests a signer may use (not SHA-1)
# What asn1crypto raises on malformed DER (its messages span several lines: only the first is kept).
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


def sign_detached(data: bytes, key, cert: x509.Certificate, attributes: bool = True,
                  include_certs: bool = True) -> bytes:
    """DER SignedData over ``data`` (detached, binary), SHA-256, signed by ``key`` for ``cert``."""
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise InputError("the signing key is neither RSA nor EC")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise InputError(f"certificate {cert.subject.rfc4514_string()} does not belong to the signing key")
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    if not include_certs:
        options.append(pkcs7.PKCS7Options.NoCerts)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256())
    return builder.sign(serialization.Encoding.DER, options)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class _Signer:
    sid: tuple  # ("issuer_and_serial_number", issuer DER, serial) or ("subject_key_identifier", bytes)
    digest: str
    signature_algorithm: str
    signature: bytes
    attrs_der: bytes | None  # the signed attributes as signed (SET OF), or None without attributes
    message_digests: list


@dataclass(frozen=True)
class _SignedData:
    detached: bool
    signers: list[_Signer]


def _parse(sig_der: bytes) -> _SignedData:
    """Every field the verifiers read, parsed at once: any malformed DER is a one-line InputError."""
    try:
        info = asn1_cms.ContentInfo.load(sig_der, strict=True)
        if info["content_type"].native != "signed_data":
            raise InputError("the signature is not a CMS SignedData")
        signed = info["content"]
        detached = signed["encap_content_info"]["content"].native in (None, b"")
        signers = []
        for si in signed["signer_infos"]:
            sid = si["sid"]
            if sid.name == "issuer_and_serial_number":
                key = (sid.name, sid.chosen["issuer"].dump(), sid.chosen["serial_number"].native)
            else:
                key = (sid.name, sid.chosen.native)
            attrs = si["signed_attrs"]
            attrs_der = mds = None
            if attrs.native:
                mds = [a["values"][0].native for a in attrs if a["type"].native == "message_digest"]
                attrs_der = b"\x31" + attrs.dump()[1:]  # signed over the SET OF, not the [0] tag
            signers.append(_Signer(key, si["digest_algorithm"]["algorithm"].native,
                                   si["signature_algorithm"]["algorithm"].native, si["signature"].native,
                                   attrs_der, mds or []))
    except _PARSE_ERRORS as e:
        raise InputError(f"the signature is not valid DER CMS ({_first_line(e)})") from None
    return _SignedData(detached, signers)


def _matches(sid: tuple, cert: x509.Certificate) -> bool:
    if sid[0] == "issuer_and_serial_number":
        return sid[2] == cert.serial_number and sid[1] == cert.issuer.public_bytes()
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return sid[1] == ski


def verify_detached(sig_der: bytes, data: bytes, trusted: list[x509.Certificate]) -> x509.Certificate:
    """Check a detached SignedData over ``data`` against ``trusted`` certificates.

    Returns the certificate whose key made the signature; raises VerificationError otherwise. Only the
    given certificates are trusted: certificates carried inside the signature are ignored. Fields
    outside what is signed are not checked: ``verify_exact`` does that.
    """
    signed = _parse(sig_der)
    if not signed.detached:
        raise VerificationError("the signature is not detached")
    if not signed.signers:
        raise VerificationError("the signature has no signer")
    errors = []
    for si in signed.signers:
        cert = next((c for c in trusted if _matches(si.sid, c)), None)
        if cert is None:
            errors.append("signer is not among the trusted certificates")
            continue
        if si.digest not in _DIGESTS:
            errors.append(f"unsupported digest {si.digest}")
            continue
        if si.attrs_der is not None:
            if si.message_digests != [hashlib.new(si.digest, data).digest()]:
                errors.append("message digest attribute does not match the data")
                continue
            signed_bytes = si.attrs_der
        else:
            signed_bytes = data
        try:
            _verify_raw(cert.public_key(), si.signature, signed_bytes, si.signature_algorithm,
                        HASHES[si.digest]())
        except InvalidSignature:
            errors.append(f"signature by {cert.subject.rfc4514_string()} does not verify")
            continue
        return cert
    raise VerificationError("; ".join(errors))


def _verify_raw(pub, signature: bytes, data: bytes, sig_alg: str, hash_alg) -> None:
    if isinstance(pub, rsa.RSAPublicKey):
        if sig_alg == "rsassa_pss":
            pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.AUTO)
        else:
            pad = padding.PKCS1v15()
        pub.verify(signature, data, pad, hash_alg)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(signature, data, ec.ECDSA(hash_alg))
    else:
        raise InvalidSignature()


# ------------------------------------------------------------------------------- exact form

EXACT_FORM = ("DER SignedData v1, detached, SHA-256, no signed or unsigned attributes, "
              "one SignerInfo by issuer and serial number")


# Fixed DER pieces of that form.
_OID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2
_OID_DATA = bytes.fromhex("06092a864886f70d010701")  # 1.2.840.113549.1.7.1
_ALG_SHA256 = bytes.fromhex("300d06096086480165030402010500")  # {2.16.840.1.101.3.4.2.1, NULL}
_ALG_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")  # {1.2.840.10045.4.3.2}
_ALG_RSA = bytes.fromhex("300d06092a864886f70d0101010500")  # {1.2.840.113549.1.1.1, NULL}
_VERSION_1 = bytes.fromhex("020101")


def _der(tag: int, *parts: bytes) -> bytes:
    content = b"".join(parts)
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


@functools.lru_cache(maxsize=64)
def _cert_parts(cert_der: bytes) -> tuple[bytes, bytes, bytes]:
    """(issuer Name DER, serialNumber INTEGER DER, signature AlgorithmIdentifier) of a certificate."""
    tbs = asn1_x509.Certificate.load(cert_der)["tbs_certificate"]
    algorithm = tbs["subject_public_key_info"]["algorithm"]["algorithm"].native
    sig_alg = {"ec": _ALG_ECDSA_SHA256, "rsa": _ALG_RSA}.get(algorithm)
    if sig_alg is None:
        raise InputError(f"a {algorithm} certificate cannot sign here (RSA or EC only)")
    return tbs["issuer"].dump(), tbs["serial_number"].dump(), sig_alg


def canonical_signed_data(cert: x509.Certificate, signature: bytes, include_cert: bool) -> bytes:
    """The DER ``sign_detached(attributes=False, include_certs=include_cert)`` writes for ``cert``:

    ContentInfo { signedData, [0] SignedData { version 1, digestAlgorithms {sha256 NULL},
    encapContentInfo {data, no content}, [0] certificates {cert} (``include_cert`` only),
    signerInfos { SignerInfo { version 1, issuerAndSerialNumber of cert, sha256 NULL,
    ecdsa-with-SHA256 (EC) or rsaEncryption NULL (RSA PKCS#1 v1.5), signature } } } }

    Everything but ``signature`` follows from the certificate.
    """
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    issuer, serial, sig_alg = _cert_parts(cert_der)
    signer = _der(0x30, _VERSION_1, _der(0x30, issuer, serial), _ALG_SHA256, sig_alg, _der(0x04, signature))
    signed = _der(0x30, _VERSION_1, _der(0x31, _ALG_SHA256), _der(0x30, _OID_DATA),
                  _der(0xA0, cert_der) if include_cert else b"", _der(0x31, signer))
    return _der(0x30, _OID_SIGNED_DATA, _der(0xA0, signed))


def verify_exact(sig_der: bytes, data: bytes, trusted: list[x509.Certificate], include_cert: bool) -> x509.Certificate:
    """Check a detached signature over ``data`` that must be exactly what ``sign_detached`` writes
    without attributes (``include_cert``: with the signer's certificate and no other; else none).

    The signer is found among ``trusted`` by issuer and serial number; the whole encoding must equal
    ``canonical_signed_data`` for that certificate and the signature value found (so: DER, not BER;
    one signer; the digest and signature algorithm identifiers; no attributes; no other certificate,
    CRL or content), and the signature value must verify over ``data``. Returns the signer.
    """
    signed = _parse(sig_der)
    if len(signed.signers) != 1:
        raise VerificationError(f"the signature has {len(signed.signers)} signers; exactly one is expected")
    si = signed.signers[0]
    if si.sid[0] != "issuer_and_serial_number":
        raise VerificationError("the signer is not named by issuer and serial number")
    cert = next((c for c in trusted if _matches(si.sid, c)), None)
    if cert is None:
        raise VerificationError("the signer is not among the trusted certificates")
    expected = canonical_signed_data(cert, si.signature, include_cert)
    if expected != sig_der:
        at = next((i for i, (a, b) in enumerate(zip(expected, sig_der)) if a != b), min(len(expected), len(sig_der)))
        what = "the signer's certificate only" if include_cert else "no certificates"
        raise VerificationError(f"the signature is not in the expected form ({EXACT_FORM}, {what}): "
                                f"it differs from that form at byte {at}")
    pub = cert.public_key()
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            if len(si.signature) != (pub.key_size + 7) // 8:
                raise InvalidSignature()
            pub.verify(si.signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            pub.verify(si.signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(f"signature by {cert.subject.rfc4514_string()} does not verify") from None
    return cert
