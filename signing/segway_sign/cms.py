"""Detached CMS / PKCS#7 signatures: made with cryptography, checked with asn1crypto + cryptography.

Used for the dm-verity root-hash signature (no signed attributes, no certificates: the form the
kernel's ``verify_pkcs7_signature`` takes) and for the release manifest signature.
"""

from __future__ import annotations

import hashlib

from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from .errors import InputError, VerificationError

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


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


def _matches(sid, cert: x509.Certificate) -> bool:
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        return (ias["serial_number"].native == cert.serial_number
                and ias["issuer"].dump() == cert.issuer.public_bytes())
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return sid.chosen.native == ski


def verify_detached(sig_der: bytes, data: bytes, trusted: list[x509.Certificate]) -> x509.Certificate:
    """Check a detached SignedData over ``data`` against ``trusted`` certificates.

    Returns the certificate whose key made the signature; raises VerificationError otherwise. Only the
    given certificates are trusted: certificates carried inside the signature are ignored.
    """
    try:
        info = asn1_cms.ContentInfo.load(sig_der)
        if info["content_type"].native != "signed_data":
            raise InputError("the signature is not a CMS SignedData")
        signed = info["content"]
        signer_infos = list(signed["signer_infos"])
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"the signature is not valid DER CMS ({e})") from None
    if signed["encap_content_info"]["content"].native not in (None, b""):
        raise VerificationError("the signature is not detached")
    if not signer_infos:
        raise VerificationError("the signature has no signer")
    errors = []
    for si in signer_infos:
        cert = next((c for c in trusted if _matches(si["sid"], c)), None)
        if cert is None:
            errors.append("signer is not among the trusted certificates")
            continue
        digest_name = si["digest_algorithm"]["algorithm"].native
        if digest_name not in _HASHES:
            errors.append(f"unsupported digest {digest_name}")
            continue
        digest = hashlib.new(digest_name, data).digest()
        attrs = si["signed_attrs"]
        if attrs.native:
            md = [a["values"][0].native for a in attrs if a["type"].native == "message_digest"]
            if md != [digest]:
                errors.append("message digest attribute does not match the data")
                continue
            signed_bytes = b"\x31" + attrs.dump()[1:]  # signed over the SET OF, not the [0] tag
        else:
            signed_bytes = data
        try:
            _verify_raw(cert.public_key(), si["signature"].native, signed_bytes,
                        si["signature_algorithm"], _HASHES[digest_name]())
        except InvalidSignature:
            errors.append(f"signature by {cert.subject.rfc4514_string()} does not verify")
            continue
        return cert
    raise VerificationError("; ".join(errors))


def _verify_raw(pub, signature: bytes, data: bytes, sig_alg, hash_alg) -> None:
    name = sig_alg["algorithm"].native
    if isinstance(pub, rsa.RSAPublicKey):
        if name == "rsassa_pss":
            pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.AUTO)
        else:
            pad = padding.PKCS1v15()
        pub.verify(signature, data, pad, hash_alg)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(signature, data, ec.ECDSA(hash_alg))
    else:
        raise InvalidSignature()
