"""The Kms servicer: turns requests into keyring / authority calls and results into responses."""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from segway_kms.api import kms_pb2 as pb
from segway_kms.api import kms_pb2_grpc
from segway_kms.errors import FailedPrecondition, InvalidArgument
from segway_kms.keyring import tenant_of
from segway_kms.server.auth import PRINCIPAL

_SCHEMES = {pb.SCHEME_DEFAULT: "default", pb.RSA_PKCS1V15: "pkcs1v15", pb.RSA_PSS: "pss", pb.ECDSA: "ecdsa"}
MAX_RANDOM = 1024
MAX_PCRS = 8
AUDIT_PAGE = 1000  # entries per ExportAudit response, well under the 4 MiB message limit


def _algorithm(value: int) -> str:
    if value == pb.KEY_ALGORITHM_UNSPECIFIED or value not in pb.KeyAlgorithm.values():
        raise InvalidArgument("choose a key algorithm (RSA_2048, RSA_3072, EC_P256, EC_P384)")
    return pb.KeyAlgorithm.Name(value)


def _scheme(value: int) -> str:
    if value not in _SCHEMES:
        raise InvalidArgument(f"unknown signature scheme {value}")
    return _SCHEMES[value]


def key_info(record, backend_name: str) -> pb.KeyInfo:
    return pb.KeyInfo(
        name=record.name, algorithm=pb.KeyAlgorithm.Value(record.algorithm), usage=record.usage,
        state=pb.KeyState.Value(record.state), primary_version=record.primary_version, created=record.created,
        expires=record.expires, backend=backend_name,
        versions=[pb.KeyVersion(version=v.version, state=pb.KeyState.Value(v.state), public_key_der=v.public_der,
                                created=v.created) for v in record.versions])


def _cert_response(authority, cert) -> pb.CertificateResponse:
    ca = authority.certificate()
    chain = ca.public_bytes(serialization.Encoding.PEM) + authority.chain_pem()
    return pb.CertificateResponse(certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                                  chain_pem=chain.decode(), serial_hex=format(cert.serial_number, "x"))


class KmsServicer(kms_pb2_grpc.KmsServicer):
    def __init__(self, keyring, authority, audit_public_pem: bytes, on_ca_ready=None):
        self.keyring = keyring
        self.authority = authority
        self.backend = keyring.backend
        self.audit_public_pem = audit_public_pem
        self.on_ca_ready = on_ca_ready or (lambda: None)

    def _info(self, record):
        return key_info(record, self.backend.name)

    # -- keys -----------------------------------------------------------------------------------------------
    def GenerateKey(self, request, context):
        return self._info(self.keyring.generate(PRINCIPAL.get(), request.name, _algorithm(request.algorithm),
                                                list(request.usage), request.expires))

    def ListKeys(self, request, context):
        return pb.ListKeysResponse(keys=[self._info(r) for r in self.keyring.list(request.tenant)])

    def GetKey(self, request, context):
        return self._info(self.keyring.get(request.name))

    def GetPublicKey(self, request, context):
        record = self.keyring.get(request.name)
        if record.state == "DESTROYED":
            raise FailedPrecondition(f"key {record.name} is destroyed")
        v = record.version(request.version)
        pem = serialization.load_der_public_key(v.public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pb.PublicKeyResponse(name=record.name, version=v.version, public_key_der=v.public_der,
                                    public_key_pem=pem.decode())

    def Sign(self, request, context):
        signature, version = self.keyring.sign(request.key.name, request.key.version, request.digest,
                                               _scheme(request.scheme))
        return pb.SignResponse(signature=signature, version=version)

    def Verify(self, request, context):
        return pb.VerifyResponse(valid=self.keyring.verify(request.key.name, request.key.version, request.digest,
                                                           request.signature, _scheme(request.scheme)))

    def RotateKey(self, request, context):
        return self._info(self.keyring.rotate(PRINCIPAL.get(), request.name))

    def DisableKey(self, request, context):
        return self._info(self.keyring.set_state(PRINCIPAL.get(), request.name, "DISABLED"))

    def EnableKey(self, request, context):
        return self._info(self.keyring.set_state(PRINCIPAL.get(), request.name, "ENABLED"))

    def DestroyKey(self, request, context):
        return self._info(self.keyring.destroy(PRINCIPAL.get(), request.name))

    # -- CA -------------------------------------------------------------------------------------------------
    def InitCa(self, request, context):
        cert, csr = self.authority.initialise(PRINCIPAL.get(), request.common_name,
                                              _algorithm(request.algorithm or pb.EC_P256), request.validity_days,
                                              request.external_root)
        if cert:
            self.on_ca_ready()
        return pb.InitCaResponse(certificate_pem=(cert or b"").decode(), csr_pem=(csr or b"").decode())

    def InstallCaCertificate(self, request, context):
        self.authority.install_certificate(PRINCIPAL.get(), request.certificate_pem.encode(),
                                           request.chain_pem.encode())
        self.on_ca_ready()
        return self.GetCaCertificate(pb.Empty(), context)

    def GetCaCertificate(self, request, context):
        cert = self.authority.require_certificate()
        return pb.CaCertificateResponse(certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                                        chain_pem=self.authority.chain_pem().decode())

    def SignCsr(self, request, context):
        cert = self.authority.sign_csr(PRINCIPAL.get(), request.csr_pem.encode(), request.profile,
                                       request.validity_days)
        return _cert_response(self.authority, cert)

    def IssueCertificate(self, request, context):
        algorithm = _algorithm(request.algorithm)
        tenant_of(request.key_name)
        self.authority.check_request(request.profile, algorithm, request.common_name, list(request.dns_names),
                                     list(request.emails), request.validity_days)
        record = self.keyring.generate(PRINCIPAL.get(), request.key_name, algorithm, ["sign", "verify"])
        cert = self.authority.issue(PRINCIPAL.get(), record, request.profile, request.common_name,
                                    list(request.dns_names), list(request.emails), request.validity_days)
        return pb.IssueResponse(key=self._info(record), certificate=_cert_response(self.authority, cert))

    def Revoke(self, request, context):
        return pb.RevokeResponse(revoked_at=self.authority.revoke(PRINCIPAL.get(), request.serial_hex,
                                                                  request.reason))

    def GetCrl(self, request, context):
        crl = self.authority.crl()
        return pb.CrlResponse(crl_der=crl.public_bytes(serialization.Encoding.DER),
                              crl_pem=crl.public_bytes(serialization.Encoding.PEM).decode())

    # -- attestation, random, audit -------------------------------------------------------------------------
    def Attest(self, request, context):
        if not self.backend.supports_attestation:
            raise FailedPrecondition(f"the {self.backend.name} backend cannot attest keys (use the TPM backend)")
        if not 8 <= len(request.nonce) <= 32:
            raise InvalidArgument("the nonce must be 8 to 32 bytes")
        pcrs = sorted(set(request.pcrs)) or [0, 1, 2, 3, 4, 5, 6, 7]
        if len(pcrs) > MAX_PCRS or any(p > 23 for p in pcrs):
            raise InvalidArgument(f"choose up to {MAX_PCRS} PCRs between 0 and 23")
        record = self.keyring.get(request.key.name)
        if record.state == "DESTROYED":
            raise FailedPrecondition(f"key {record.name} is destroyed")
        evidence = self.backend.attest(record.version(request.key.version).ref, request.nonce, pcrs)
        return pb.AttestResponse(nonce=request.nonce, **evidence)

    def ActivateCredential(self, request, context):
        if not self.backend.supports_attestation:
            raise FailedPrecondition(f"the {self.backend.name} backend has no attestation key")
        return pb.ActivateCredentialResponse(secret=self.backend.activate_credential(request.credential_blob,
                                                                                     request.encrypted_secret))

    def GetRandom(self, request, context):
        if not 1 <= request.length <= MAX_RANDOM:
            raise InvalidArgument(f"length must be 1 to {MAX_RANDOM}")
        return pb.RandomResponse(data=self.backend.random(request.length))

    def ExportAudit(self, request, context):
        limit = min(request.limit or AUDIT_PAGE, AUDIT_PAGE)
        first = max(1, request.from_seq)
        nonce = request.anchor_nonce
        anchor = self.keyring.audit.anchor if self.keyring.audit is not None else None
        if nonce:
            if not 8 <= len(nonce) <= 32:
                raise InvalidArgument("the anchor nonce must be 8 to 32 bytes")
            if anchor is None:
                raise FailedPrecondition(f"the audit log of this KMS has no TPM anchor (backend {self.backend.name})")
        store = self.keyring.store
        # One lock for the page and the certification: the anchor then covers exactly the entries returned.
        with store.lock:
            rows = store.query("SELECT seq, entry FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?", (first, limit + 1))
            next_seq = rows[limit][0] if len(rows) > limit else 0
            certified = anchor.certify(nonce) if nonce and not next_seq else None
        return pb.AuditExportResponse(entries=[r[1] for r in rows[:limit]], next_seq=next_seq,
                                      audit_public_key_pem=self.audit_public_pem.decode(),
                                      anchor=pb.AuditAnchor(**certified) if certified else None)
