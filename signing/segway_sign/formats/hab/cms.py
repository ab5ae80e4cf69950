"""The CMS signatures HAB verifies: detached SignedData, SHA-256, no certificates.

Same shape as NXP CST (``CMS_DETACHED | CMS_NOCERTS | CMS_NOSMIMECAP | CMS_BINARY``, CST
``src/lib/back_end/adapt_layer_openssl.c``): signer identified by issuer and serial number, signed
attributes content-type, signing-time, message-digest. RSA PKCS#1 v1.5, or ECDSA (DER) on HAB 4.5.
``cryptography``'s PKCS7 builder cannot leave out S/MIME capabilities, so the structure is built with
asn1crypto and only the signed-attributes bytes go to the key.
"""

from __future__ import annotations

import datetime
import hashlib

from asn1crypto import algos, cms, x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ...crypto import spki_der
from ...errors import InputError, UsageError, VerificationError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# OpenSSL (and so CST) writes sha256 and ecdsa-with-SHA256 without parameters; asn1crypto would add
# NULL when building them, so they are loaded from their DER.
_SHA256 = bytes.fromhex("300b0609608648016503040201")
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")




def _signed_attributes(digest: bytes, signing_time: datetime.datetime) -> cms.CMSAttributes:
    # DER orders SET OF members by encoding; for these three that is this order (as OpenSSL emits).
    return cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": signing_time})]}),
            cms.CMSAttribute({"type": "message_digest", "values": [digest]}),
        ]
    )


def _check_key_matches(key: PrivateKey, cert: x509.Certificate) -> None:
    if spki_der(key.public_key()) != spki_der(cert.public_key()):
        raise UsageError(f"the signing key does not match the certificate {cert.subject.rfc4514_string()}")


def sign_detached(data: bytes, key: PrivateKey, cert: x509.Certificate,
                  signing_time: datetime.datetime) -> bytes:
    """DER CMS SignedData over ``data`` (detached) made with ``key``, the holder of ``cert``."""
    _check_key_matches(key, cert)
    attrs = _signed_attributes(hashlib.sha256(data).digest(), signing_time)
    to_sign = attrs.dump()  # DER with the SET OF tag, as RFC 5652 §5.4 requires
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
    else:
        raise UsageError(f"HAB signs with RSA or ECDSA keys, not {type(key).__name__}")
    der = _assemble(cert, attrs, signature)
    verify_detached(der, data, cert)
    return der


def max_size(cert: x509.Certificate, signing_time: datetime.datetime) -> int:
    """Upper bound of ``sign_detached``'s output size for ``cert``'s key (ECDSA DER varies)."""
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        sig_len = (public.key_size + 7) // 8
    elif isinstance(public, ec.EllipticCurvePublicKey):
        n = (public.key_size + 7) // 8 + 1  # an INTEGER may need a leading zero
        body = 2 * (1 + len(_der_length(n)) + n)
        sig_len = 1 + len(_der_length(body)) + body
    else:
        raise UsageError(f"HAB signs with RSA or ECDSA keys, not {type(public).__name__}")
    attrs = _signed_attributes(bytes(32), signing_time)
    return len(_assemble(cert, attrs, bytes(sig_len)))


def _assemble(cert: x509.Certificate, attrs: cms.CMSAttributes, signature: bytes) -> bytes:
    asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    sid = cms.IssuerAndSerialNumber({"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number})
    return _assemble_sid(sid, isinstance(cert.public_key(), rsa.RSAPublicKey), attrs, signature)


def _assemble_sid(sid: cms.IssuerAndSerialNumber, is_rsa: bool, attrs: cms.CMSAttributes, signature: bytes) -> bytes:
    if is_rsa:
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"})
    else:
        sig_alg = algos.SignedDigestAlgorithm.load(_ECDSA_SHA256)
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": sid}),
            "digest_algorithm": algos.DigestAlgorithm.load(_SHA256),
            "signed_attrs": attrs,
            "signature_algorithm": sig_alg,
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [algos.DigestAlgorithm.load(_SHA256)],
            "encap_content_info": {"content_type": "data"},
            "signer_infos": [signer],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


def verify_detached(der: bytes, data: bytes, cert) -> None:
    """Check a HAB CMS signature over ``data`` with ``cert``'s key (or a bare public key, as an SRK
    slot holds one); raise VerificationError.

    Only the signed attributes are covered by the signature, so the rest of the structure must be
    exactly the one CST (and ``sign_detached``) writes: one signer named by ``cert``'s issuer and
    serial number, SHA-256, no certificates, nothing after the DER."""
    public = cert.public_key() if isinstance(cert, x509.Certificate) else cert
    try:
        info = cms.ContentInfo.load(der, strict=True)
        signer = info["content"]["signer_infos"][0]
        attrs = signer["signed_attrs"]
        types = [a["type"].native for a in attrs]
        digest = next(a["values"][0].native for a in attrs if a["type"].native == "message_digest")
        signature = signer["signature"].native
        # stored as [0] IMPLICIT; the signature covers the same content under the SET OF tag
        contents = attrs.contents
        to_verify = b"\x31" + _der_length(len(contents)) + contents
        if isinstance(cert, x509.Certificate):
            asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
            sid = cms.IssuerAndSerialNumber({"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number})
        else:  # an SRK slot has no certificate to name the signer by; take the name as written
            sid = signer["sid"].chosen
        expected = _assemble_sid(sid, isinstance(public, rsa.RSAPublicKey), attrs, signature)
    except (ValueError, KeyError, TypeError, IndexError, StopIteration) as err:
        raise InputError(f"malformed CMS signature: {' '.join(str(err).split())}") from None
    if sorted(types) != sorted(["content_type", "signing_time", "message_digest"]) or \
            not isinstance(signature, bytes) or not isinstance(digest, bytes):
        raise VerificationError("CMS signature: signed attributes other than HAB's (content type, signing "
                                "time, message digest)")
    if expected != der:
        raise VerificationError("CMS signature: the structure around the signed attributes differs from the "
                                "one HAB signatures have (signer, algorithms or lengths changed)")
    if digest != hashlib.sha256(data).digest():
        raise VerificationError("CMS message digest does not match the signed data")
    who = cert.subject.rfc4514_string() if isinstance(cert, x509.Certificate) else "the SRK"
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, to_verify, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, to_verify, ec.ECDSA(hashes.SHA256()))
        else:
            raise VerificationError("unsupported public key in certificate")
    except InvalidSignature:
        raise VerificationError(f"CMS signature does not verify with {who}") from None


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw
