"""Certificates of a HAB PKI tree (SRK → CSF key, SRK → IMG key), made with keys that stay in a token.

HAB reads only the public key, the CA flag and the signature of these X.509 certificates; the CMS
signer is matched by issuer and serial number. The shape follows CST's ``hab4_pki_tree.sh``
(v3, basicConstraints CA:TRUE for SRKs, CA:FALSE for CSF/IMG keys, SHA-256).
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ...errors import UsageError


def issue_certificate(subject_public_key, common_name: str, issuer_key, issuer_cert: x509.Certificate | None,
                      *, ca: bool, serial: int, not_before: datetime.datetime, days: int = 3650) -> x509.Certificate:
    """A HAB certificate for ``subject_public_key`` signed by ``issuer_key`` (self-signed when
    ``issuer_cert`` is None: an SRK certificate for srktool)."""
    if serial <= 0:
        raise UsageError("certificate serial numbers must be positive")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    if issuer_cert is None:
        if issuer_key.public_key().public_numbers() != subject_public_key.public_numbers():
            raise UsageError("a self-signed SRK certificate needs the SRK's own key")
        issuer = subject
    else:
        issuer = issuer_cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())
