"""Certificates of the ceremony: an offline root CA and one signing certificate per purpose."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
CA_PURPOSES = frozenset({"hab"})


def signing_certificate(spec: KeySpec, public_key, issuer_cert: x509.Certificate, issuer_key,
                        now: datetime.datetime) -> x509.Certificate:
    start, end = _validity(now, spec.validity_days)
    end = min(end, issuer_cert.not_valid_after_utc)
    is_ca = spec.purpose in CA_PURPOSES
    builder = (x509.CertificateBuilder().subject_name(name(spec.subject)).issuer_name(issuer_cert.subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=is_ca, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    return builder.sign(issuer_key, signature_hash(issuer_key))


def key_type_name(public_key) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    return {256: "p256", 384: "p384"}.get(public_key.curve.key_size, public_key.curve.name)
