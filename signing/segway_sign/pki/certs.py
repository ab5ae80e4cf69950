"""Certificates of the ceremony: an offline root CA and one signing certificate per purpose."""

from __future__ import annotations

import datetime
import hashlib

from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import UsageError
from ..raw_ec import RawECPublicKey
from .plan import _NAME_FIELDS, KeySpec


def name(subject: dict[str, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(getattr(NameOID, _NAME_FIELDS[k]), v) for k, v in subject.items()])


def signature_hash(key) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _validity(now: datetime.datetime, days: int) -> tuple[datetime.datetime, datetime.datetime]:
    return now, now + datetime.timedelta(days=days)


def root_certificate(spec: KeySpec, key, now: datetime.datetime) -> x509.Certificate:
    subject = name(spec.subject)
    start, end = _validity(now, spec.validity_days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               # One CA level below the root: HAB SRKs certify the CSF and image keys.
               .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(ski, critical=False))
    return builder.sign(key, signature_hash(key))


# HAB super root keys are CAs: they certify the CSF and image keys (srktool copies the CA flag
# into the SRK table, so it is part of what the SRK_HASH fuses commit to).
CA_PURPOSES = frozenset({"hab", "ahab"})


def _signing_extensions(is_ca: bool, ski: x509.SubjectKeyIdentifier,
                        issuer_key) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) of a signing certificate, in order."""
    return [
        (x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=is_ca, crl_sign=False,
                       encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False),
        (ski, False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False),
    ]


def signing_certificate(spec: KeySpec, public_key, issuer_cert: x509.Certificate, issuer_key,
                        now: datetime.datetime) -> x509.Certificate:
    if isinstance(public_key, RawECPublicKey):
        return raw_key_certificate(spec, public_key, issuer_cert, issuer_key, now)
    start, end = _validity(now, spec.validity_days)
    end = min(end, issuer_cert.not_valid_after_utc)
    is_ca = spec.purpose in CA_PURPOSES
    builder = (x509.CertificateBuilder().subject_name(name(spec.subject)).issuer_name(issuer_cert.subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end))
    for ext, critical in _signing_extensions(is_ca, x509.SubjectKeyIdentifier.from_public_key(public_key),
                                             issuer_key):
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def _asn1_time(when: datetime.datetime) -> asn1_x509.Time:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    return asn1_x509.Time({"utc_time" if when.year < 2050 else "general_time": when})


def raw_key_certificate(spec: KeySpec, public_key: RawECPublicKey, issuer_cert: x509.Certificate, issuer_key,
                        now: datetime.datetime) -> x509.Certificate:
    """A signing certificate for a key cryptography cannot load (brainpoolP256t1).

    cryptography's builder needs a cryptography public key, so the TBSCertificate is assembled with
    asn1crypto from the same names and extensions, and signed by the issuer key as usual.
    """
    if spec.purpose in CA_PURPOSES:
        raise UsageError(f"a {public_key.curve_name} key cannot be a CA")
    start, end = _validity(now, spec.validity_days)
    end = min(end, issuer_cert.not_valid_after_utc)
    hash_ = signature_hash(issuer_key)
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        algorithm = {"algorithm": f"{hash_.name}_rsa", "parameters": asn1_core.Null()}
    elif isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        algorithm = {"algorithm": f"{hash_.name}_ecdsa"}
    else:
        raise UsageError("the issuing key must be an RSA or EC key")
    # RFC 5280 4.2.1.2 method 1, as for every other key: SHA-1 of the subjectPublicKey bits.
    ski = x509.SubjectKeyIdentifier(hashlib.sha1(public_key.point).digest())
    extensions = [{"extn_id": ext.oid.dotted_string, "critical": critical,
                   "extn_value": asn1_core.ParsableOctetString(ext.public_bytes())}
                  for ext, critical in _signing_extensions(False, ski, issuer_key)]
    tbs = asn1_x509.TbsCertificate({
        "version": "v3",
        "serial_number": x509.random_serial_number(),
        "signature": algorithm,
        "issuer": asn1_x509.Name.load(issuer_cert.subject.public_bytes()),
        "validity": {"not_before": _asn1_time(start), "not_after": _asn1_time(end)},
        "subject": asn1_x509.Name.load(name(spec.subject).public_bytes()),
        "subject_public_key_info": asn1_keys.PublicKeyInfo.load(public_key.spki_der()),
        "extensions": extensions,
    })
    tbs_der = tbs.dump()
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        signature = issuer_key.sign(tbs_der, padding.PKCS1v15(), hash_)
    else:
        signature = issuer_key.sign(tbs_der, ec.ECDSA(hash_))
    der = asn1_x509.Certificate({"tbs_certificate": tbs, "signature_algorithm": algorithm,
                                 "signature_value": signature}).dump()
    return x509.load_der_x509_certificate(der)


def key_type_name(public_key) -> str:
    if isinstance(public_key, RawECPublicKey):
        return {"brainpoolP256t1": "bp256t1"}.get(public_key.curve_name, public_key.curve_name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    return {256: "p256", 384: "p384"}.get(public_key.curve.key_size, public_key.curve.name)
