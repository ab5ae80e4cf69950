"""The mini-CA: a CA key inside the backend, profile-checked issuance, revocation and a signed CRL."""
from __future__ import annotations

import datetime
import re
import threading
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from segway_kms.ca import profiles as prof
from segway_kms.config import MAX_VALIDITY_DAYS
from segway_kms.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, clip
from segway_kms.fsutil import atomic_write

CA_KEY = "ca"
SERIAL_RE = re.compile(r"[0-9a-fA-F]{1,40}")  # RFC 5280: at most 20 octets
REASONS = {r.name: r for r in x509.ReasonFlags}
REASONS.update({"keyCompromise": x509.ReasonFlags.key_compromise, "cACompromise": x509.ReasonFlags.ca_compromise,
                "affiliationChanged": x509.ReasonFlags.affiliation_changed,
                "superseded": x509.ReasonFlags.superseded,
                "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
                "certificateHold": x509.ReasonFlags.certificate_hold})


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _hash_for(public):
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size > 256:
        return hashes.SHA384()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size > 2048:
        return hashes.SHA384()
    return hashes.SHA256()


def _serial(backend) -> int:
    # 120 random bits from the backend's RNG under a fixed top bit: positive, always 16 octets, well over
    # the 64 bits of entropy asked for and under the 20-octet limit of RFC 5280 §4.1.2.2.
    return (1 << 127) | int.from_bytes(backend.random(15), "big")


def _check_chain(cert: x509.Certificate, chain: list[x509.Certificate]) -> None:
    """Each certificate is issued by the next chain certificate, every chain certificate is a CA, and a
    self-issued last one (the root) verifies under its own key: no byte of the chain goes unchecked."""
    what = ["the CA certificate"] + [f"chain certificate {i + 1}" for i in range(len(chain))]
    for i, issuer in enumerate(chain):
        try:
            if not issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise InvalidArgument(f"{what[i + 1]} is not a CA certificate")
        except x509.ExtensionNotFound:
            raise InvalidArgument(f"{what[i + 1]} has no basicConstraints: not a CA certificate") from None
        except (ValueError, x509.DuplicateExtension):
            raise InvalidArgument(f"{what[i + 1]} is malformed") from None
        subject = ([cert] + chain)[i]
        try:
            subject.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise InvalidArgument(f"{what[i]} is not issued by {what[i + 1]}") from None
    if chain and chain[-1].issuer == chain[-1].subject:
        try:
            chain[-1].verify_directly_issued_by(chain[-1])
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise InvalidArgument(f"{what[-1]} is self-issued but its signature does not verify") from None


class Authority:
    def __init__(self, keyring, store, cert_profiles, crl_days: int, publish_dir: Path | None = None):
        self.keyring = keyring
        self.store = store
        self.profiles = cert_profiles
        self.crl_days = crl_days
        self.publish_dir = publish_dir
        self._crl_lock = threading.Lock()
        self._crl: x509.CertificateRevocationList | None = None

    # -- state ----------------------------------------------------------------------------------------------
    def certificate(self) -> x509.Certificate | None:
        pem = self.store.get_setting("ca.cert")
        return x509.load_pem_x509_certificate(pem) if pem else None

    def chain_pem(self) -> bytes:
        return self.store.get_setting("ca.chain") or b""

    def require_certificate(self) -> x509.Certificate:
        cert = self.certificate()
        if cert is None:
            raise FailedPrecondition("the CA is not initialised "
                                     "(InitCa, then InstallCaCertificate for an external root)")
        return cert

    def _signer(self):
        record = self.keyring.get_system(CA_KEY)
        return self.keyring.signer(record), record

    # -- setup ----------------------------------------------------------------------------------------------
    def initialise(self, principal: str, common_name: str, algorithm: str, days: int, external_root: bool):
        if self.certificate() is not None:
            raise AlreadyExists("the CA is already initialised")
        if not common_name:
            raise InvalidArgument("the CA needs a common name")
        if len(common_name) > prof.MAX_CN:
            raise InvalidArgument(f"the common name '{clip(common_name)}' is {len(common_name)} characters long "
                                  f"(at most {prof.MAX_CN})")
        if not 0 <= days <= MAX_VALIDITY_DAYS:
            raise InvalidArgument(f"validity_days {days} is out of range (0 for 3650, up to {MAX_VALIDITY_DAYS})")
        try:
            record = self.keyring.get_system(CA_KEY)
        except NotFound:
            record = self.keyring.generate_system(CA_KEY, algorithm, persistent=True)
        key = self.keyring.signer(record)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        if external_root:
            csr = (x509.CertificateSigningRequestBuilder().subject_name(name)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(key, _hash_for(key.public_key())))
            with self.store.transaction() as db:
                self.keyring.audit.append(db, principal, "InitCa", "ca", {"cn": common_name, "external": True})
            return None, csr.public_bytes(serialization.Encoding.PEM)
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(_serial(self.keyring.backend)).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days or 3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
                .sign(key, _hash_for(key.public_key())))
        cert.verify_directly_issued_by(cert)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        with self.store.transaction() as db:
            self.store.put_setting(db, "ca.cert", pem)
            self.store.put_setting(db, "ca.chain", b"")
            self.keyring.audit.append(db, principal, "InitCa", "ca", {"cn": common_name, "external": False})
        self._crl = None
        return pem, None

    def install_certificate(self, principal: str, cert_pem: bytes, chain_pem: bytes):
        if self.certificate() is not None:
            raise AlreadyExists("the CA is already initialised")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            chain = x509.load_pem_x509_certificates(chain_pem) if chain_pem.strip() else []
        except ValueError:
            raise InvalidArgument("the CA certificate or chain is not valid PEM") from None
        try:
            _key, record = self._signer()
        except NotFound:
            raise FailedPrecondition("no CA key yet: run InitCa with external_root first") from None
        try:
            # extensions and the key are parsed on first access: malformed ones raise here
            if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise InvalidArgument("the certificate is not a CA certificate")
            spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        except x509.ExtensionNotFound:
            raise InvalidArgument("the certificate has no basicConstraints: not a CA certificate") from None
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension):
            raise InvalidArgument("the CA certificate is malformed") from None
        if spki != record.version().public_der:
            raise InvalidArgument("the certificate is not for the CA key of this KMS")
        _check_chain(cert, chain)
        with self.store.transaction() as db:
            self.store.put_setting(db, "ca.cert", cert.public_bytes(serialization.Encoding.PEM))
            self.store.put_setting(db, "ca.chain", b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
            self.keyring.audit.append(db, principal, "InstallCaCertificate", "ca",
                                      {"serial": format(cert.serial_number, "x")})
        self._crl = None

    # -- issuance -------------------------------------------------------------------------------------------
    def _issue(self, principal: str, op: str, profile_name: str, subject: x509.Name, public,
               sans: list[x509.GeneralName], days: int, extra_audit=None) -> x509.Certificate:
        ca_cert = self.require_certificate()
        profile = prof.lookup(self.profiles, profile_name)
        cn = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        san_values = [str(n.value) for n in sans]
        days = prof.check_request(profile, public, cn[0] if cn else None, san_values, days)
        key, _record = self._signer()
        now = _now()
        not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public)
                   .serial_number(_serial(self.keyring.backend)).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=isinstance(public, rsa.RSAPublicKey),
                                                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                                crl_sign=False, encipher_only=False, decipher_only=False),
                                   critical=True)
                   .add_extension(prof.extended_key_usage(profile), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(key, _hash_for(ca_cert.public_key()))
        cert.verify_directly_issued_by(ca_cert)
        serial = format(cert.serial_number, "x")
        with self.store.transaction() as db:
            db.execute("INSERT INTO certificates (serial, subject, profile, not_after, der) VALUES (?, ?, ?, ?, ?)",
                       (serial, cert.subject.rfc4514_string(), profile.name, int(not_after.timestamp()),
                        cert.public_bytes(serialization.Encoding.DER)))
            self.keyring.audit.append(db, principal, op, serial, {"subject": cert.subject.rfc4514_string(),
                                                                   "profile": profile.name, "sans": san_values})
            if extra_audit:
                extra_audit(db)
        return cert

    def issue_tls_server(self, server_name: str, public) -> x509.Certificate:
        """The daemon's own TLS server certificate (its key is a software key: gRPC core needs it in memory)."""
        from segway_kms.config import Profile
        profile = Profile(name="_tls-server", ekus=["serverAuth"], san_patterns=[re.escape(server_name)],
                          max_days=30, key_types=["EC_P256"])
        self.profiles.setdefault(profile.name, profile)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
        return self._issue("segway-kmsd", "IssueTlsServerCertificate", profile.name, subject, public,
                           [x509.DNSName(server_name)], 30)

    def sign_csr(self, principal: str, csr_pem: bytes, profile: str, days: int) -> x509.Certificate:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            if not csr.is_signature_valid:
                raise InvalidArgument("the CSR signature does not verify")
            sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) \
                if any(isinstance(e.value, x509.SubjectAlternativeName) for e in csr.extensions) else []
            public = csr.public_key()
            subject = csr.subject  # parsed on first access
            subject.rfc4514_string()
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType):
            raise InvalidArgument("the CSR is malformed") from None
        if not all(isinstance(n, (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier)) for n in sans):
            raise InvalidArgument("the CSR asks for a SAN type other than DNS, e-mail or URI")
        return self._issue(principal, "SignCsr", profile, subject, public, sans, days)

    def issue(self, principal: str, key_record, profile: str, common_name: str, dns: list[str], emails: list[str],
              days: int) -> x509.Certificate:
        public = serialization.load_der_public_key(key_record.version().public_der)
        sans = [x509.DNSName(d) for d in dns] + [x509.RFC822Name(e) for e in emails]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]) if common_name else x509.Name([])
        return self._issue(principal, "IssueCertificate", profile, subject, public, sans, days)

    def check_request(self, profile: str, algorithm: str, common_name: str, dns: list[str], emails: list[str],
                      days: int) -> None:
        """Validate an IssueCertificate request before any key is generated for it."""
        self.require_certificate()
        p = prof.lookup(self.profiles, profile)
        prof.check_subject(common_name, dns, emails)
        if algorithm not in p.key_types:
            raise InvalidArgument(f"profile {p.name} does not allow {algorithm} keys")
        for name in ([common_name] if common_name else []) + list(dns) + list(emails):
            if not any(re.fullmatch(pat, name) for pat in p.san_patterns):
                raise InvalidArgument(f"name '{clip(name)}' is not allowed by profile {p.name}")
        if days < 0 or days > p.max_days:
            raise InvalidArgument(f"lifetime {days} days exceeds the profile maximum of {p.max_days}")

    # -- revocation -----------------------------------------------------------------------------------------
    def is_revoked(self, serial: int) -> bool:
        rows = self.store.query("SELECT revoked_at FROM certificates WHERE serial = ?", (format(serial, "x"),))
        return bool(rows and rows[0][0])

    def revoke(self, principal: str, serial_hex: str, reason: str) -> int:
        self.require_certificate()
        if not SERIAL_RE.fullmatch(serial_hex):
            raise InvalidArgument(f"the serial '{clip(serial_hex)}' is not 1 to 40 hexadecimal digits")
        serial = serial_hex.lower().lstrip("0") or "0"
        if reason and reason not in REASONS:
            raise InvalidArgument(f"unknown revocation reason '{clip(reason)}'")
        rows = self.store.query("SELECT revoked_at FROM certificates WHERE serial = ?", (serial,))
        if not rows:
            raise NotFound(f"no certificate with serial {serial_hex} was issued by this CA")
        if rows[0][0]:
            raise FailedPrecondition(f"certificate {serial_hex} is already revoked")
        now = int(_now().timestamp())
        with self.store.transaction() as db:
            db.execute("UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ?",
                       (now, reason or None, serial))
            self.keyring.audit.append(db, principal, "Revoke", serial, {"reason": reason})
        with self._crl_lock:
            self._crl = None
        self.crl()
        return now

    def crl(self) -> x509.CertificateRevocationList:
        """The current CRL; re-signed on revocation and when half of its validity has passed."""
        ca_cert = self.require_certificate()
        with self._crl_lock:
            now = _now()
            if self._crl is not None:
                half = self._crl.last_update_utc + (self._crl.next_update_utc - self._crl.last_update_utc) / 2
                if now < half:
                    return self._crl
            key, _record = self._signer()
            with self.store.transaction() as db:
                row = db.execute("SELECT v FROM settings WHERE k = 'crl.number'").fetchone()
                number = int(row[0]) + 1 if row else 1
                self.store.put_setting(db, "crl.number", str(number).encode())
            builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
                       .next_update(now + datetime.timedelta(days=self.crl_days))
                       .add_extension(x509.CRLNumber(number), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                                      critical=False))
            for serial, revoked_at, reason in self.store.query(
                    "SELECT serial, revoked_at, reason FROM certificates WHERE revoked_at IS NOT NULL"):
                entry = (x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
                         .revocation_date(datetime.datetime.fromtimestamp(revoked_at, datetime.timezone.utc)))
                if reason:
                    entry = entry.add_extension(x509.CRLReason(REASONS[reason]), critical=False)
                builder = builder.add_revoked_certificate(entry.build())
            crl = builder.sign(key, _hash_for(ca_cert.public_key()))
            if not crl.is_signature_valid(ca_cert.public_key()):
                raise FailedPrecondition("the freshly signed CRL does not verify")
            if self.publish_dir is not None:
                atomic_write(self.publish_dir / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
            self._crl = crl
            return crl
