"""segway_sign.crypto's certificate loader on certificates cryptography loads but parses further only
when a part is first read: every such part is read at load, and a malformed one is a one-line
CertificateError there (parse_certificate: None), never an exception at its first use."""

from __future__ import annotations

import base64
import datetime

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from segway_sign.crypto import CertificateError, load_certificate_bytes, parse_certificate

SKI = b"\xaa" * 20
PRIVATE = "1.3.6.1.4.1.55555."


def certificate() -> tuple[bytes, bytes]:
    """A DER certificate with distinct issuer and subject names, a subject key identifier and two
    private extensions; and its key's uncompressed point."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "subject-cn")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer-cn")]))
            .public_key(key.public_key()).serial_number(9)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier(SKI), critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(PRIVATE + "1"), b"\x05\x00"),
                           critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(PRIVATE + "2"), b"\x05\x00"),
                           critical=False)
            .sign(key, hashes.SHA256()))
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return cert.public_bytes(serialization.Encoding.DER), point


def replaced(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) == 1 and len(old) == len(new)
    return der.replace(old, new)


def damaged(part: str) -> bytes:
    der, point = certificate()
    if part == "subject":  # the long fuzz run's certs/verity.pem: a byte of the CN that is not UTF-8
        return replaced(der, b"subject-cn", b"subject-c\x89")
    if part == "issuer":
        return replaced(der, b"issuer-cn", b"issuer-c\x89")
    if part == "extension value":  # the SubjectKeyIdentifier's OCTET STRING tag
        return replaced(der, b"\x04\x14" + SKI, b"\x05\x14" + SKI)
    if part == "duplicate extension":  # the second private extension's OID made the first's
        return replaced(der, core.ObjectIdentifier(PRIVATE + "2").dump(), core.ObjectIdentifier(PRIVATE + "1").dump())
    assert part == "public key"  # a point off the curve
    bad = bytearray(point)
    bad[5] ^= 0x40
    return replaced(der, point, bytes(bad))


PROBLEMS = {
    "subject": "has a malformed subject",
    "issuer": "has a malformed issuer",
    "extension value": "has malformed extensions",
    "duplicate extension": "has malformed extensions",
    "public key": "holds an invalid public key",
}


@pytest.mark.parametrize("part", sorted(PROBLEMS))
def test_a_malformed_part_is_refused_at_load(part):
    der = damaged(part)
    x509.load_der_x509_certificate(der)  # what cryptography alone accepts
    with pytest.raises(CertificateError, match=PROBLEMS[part]) as err:
        load_certificate_bytes(der)
    assert "\n" not in str(err.value)
    assert parse_certificate(der) is None
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(CertificateError, match=PROBLEMS[part]):
        load_certificate_bytes(pem, pem=True)


def test_good_certificate_and_non_certificates():
    der, _ = certificate()
    cert = load_certificate_bytes(der)
    assert cert.subject.rfc4514_string() == "CN=subject-cn"
    with pytest.raises(CertificateError, match="is not a DER X.509 v1-v3 certificate"):
        load_certificate_bytes(der[:-3])
    with pytest.raises(CertificateError, match=r"is not an X.509 certificate \(PEM or DER\)"):
        load_certificate_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", pem=True)
