"""Malformed requests through the real gRPC client: the right status code, a short one-line detail, no
traceback in the daemon log, and the daemon keeps serving."""
from __future__ import annotations

import base64
import datetime
import hashlib
import random
import signal

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segway_kms.api import kms_pb2 as pb

from ..conftest import Daemon, SoftHsm, pkcs11_backend

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
MAX_DETAIL = 512
HUGE = "acme/" + "k" * 10_000


def _status(call, request) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=30)
        return OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _expect(cases) -> None:
    """cases: (label, call, request, expected code); every detail one line and short."""
    wrong = []
    for label, call, request, expected in cases:
        code, details = _status(call, request)
        if code != expected or "\n" in details or len(details) > MAX_DETAIL:
            wrong.append(f"{label}: {code.name} {details[:160]!r} (expected {expected.name})")
    assert not wrong, "\n".join(wrong)


def _assert_healthy(daemon) -> None:
    """No traceback and no error logged by the daemon (the TPM library's own "ERROR:esys:" lines for a
    command the TPM refused are not the daemon's); still serving, still signing."""
    log = daemon.log.read_text()
    assert "Traceback" not in log, log[-4000:]
    assert not [line for line in log.splitlines() if line.startswith(("ERROR ", "CRITICAL "))], log[-4000:]
    assert daemon.proc.poll() is None
    with grpc.insecure_channel(f"unix:{daemon.sockets['bin']}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"),
                                                      timeout=30).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    admin = daemon.stub("root")
    try:
        admin.GenerateKey(pb.GenerateKeyRequest(name="acme/canary", algorithm=pb.EC_P256))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    digest = hashlib.sha256(b"still serving").digest()
    assert admin.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/canary"), digest=digest), timeout=30).signature


def _csr(cn: str = "fuzz") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def test_out_of_range_integers_are_invalid_argument(tpm_daemon):
    admin = tpm_daemon.stub("root")
    admin.GenerateKey(pb.GenerateKeyRequest(name="acme/k", algorithm=pb.EC_P256))
    key = pb.KeyRef(name="acme/k")
    digest = bytes(32)
    _expect([
        ("ExportAudit from_seq 2^64-1", admin.ExportAudit, pb.AuditExportRequest(from_seq=2**64 - 1), INVALID),
        ("ExportAudit from_seq 2^63", admin.ExportAudit, pb.AuditExportRequest(from_seq=2**63), INVALID),
        ("ExportAudit from_seq 2^63-1", admin.ExportAudit, pb.AuditExportRequest(from_seq=2**63 - 1, limit=2**32 - 1),
         OK),
        ("GenerateKey expires 2^63-1", admin.GenerateKey,
         pb.GenerateKeyRequest(name="acme/e1", algorithm=pb.EC_P256, expires=2**63 - 1), INVALID),
        ("GenerateKey expires year 10000", admin.GenerateKey,
         pb.GenerateKeyRequest(name="acme/e2", algorithm=pb.EC_P256, expires=253402300800), INVALID),
        ("GenerateKey expires -1", admin.GenerateKey,
         pb.GenerateKeyRequest(name="acme/e3", algorithm=pb.EC_P256, expires=-1), INVALID),
        ("GenerateKey algorithm 2^31-1", admin.GenerateKey,
         pb.GenerateKeyRequest(name="acme/e4", algorithm=2**31 - 1), INVALID),
        ("GenerateKey algorithm -1", admin.GenerateKey, pb.GenerateKeyRequest(name="acme/e5", algorithm=-1), INVALID),
        ("InitCa validity_days 2^32-1", admin.InitCa,
         pb.InitCaRequest(common_name="x", algorithm=pb.EC_P256, validity_days=2**32 - 1), INVALID),
        ("SignCsr validity_days 2^32-1", admin.SignCsr,
         pb.SignCsrRequest(csr_pem=_csr(), profile="user", validity_days=2**32 - 1), INVALID),
        ("IssueCertificate validity_days 36501", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i1", algorithm=pb.EC_P256, profile="user", common_name="i",
                         validity_days=36501), INVALID),
        ("GetRandom length 2^32-1", admin.GetRandom, pb.RandomRequest(length=2**32 - 1), INVALID),
        ("Attest PCR 2^32-1", admin.Attest, pb.AttestRequest(key=key, nonce=b"n" * 16, pcrs=[2**32 - 1]), INVALID),
        ("Attest version 2^32-1", admin.Attest,
         pb.AttestRequest(key=pb.KeyRef(name="acme/k", version=2**32 - 1), nonce=b"n" * 16), NOT_FOUND),
        ("GetPublicKey version 2^32-1", admin.GetPublicKey, pb.KeyRef(name="acme/k", version=2**32 - 1), NOT_FOUND),
        ("Sign scheme 2^31-1", admin.Sign, pb.SignRequest(key=key, digest=digest, scheme=2**31 - 1), INVALID),
        ("Verify scheme -2^31", admin.Verify,
         pb.VerifyRequest(key=key, digest=digest, signature=b"x", scheme=-2**31), INVALID),
    ])
    code, details = _status(admin.ExportAudit, pb.AuditExportRequest(from_seq=2**64 - 1))
    assert details == "from_seq 18446744073709551615 is out of range (at most 9223372036854775807)"
    page = admin.ExportAudit(pb.AuditExportRequest(from_seq=2**63 - 1))
    assert not page.entries and page.next_seq == 0
    assert "acme/i1" not in {k.name for k in admin.ListKeys(pb.ListKeysRequest(tenant="acme")).keys}
    _assert_healthy(tpm_daemon)


def test_huge_values_are_echoed_truncated(tpm_daemon):
    """A 10 KB value would not fit the client's metadata limit: details repeat at most 128 characters."""
    admin, user = tpm_daemon.stub("root"), tpm_daemon.stub("bin")  # stubs with the default client limits
    admin.GenerateKey(pb.GenerateKeyRequest(name="acme/k", algorithm=pb.EC_P256))
    csr = _csr()
    cases = [
        ("GetKey", admin.GetKey, pb.KeyRef(name=HUGE)),
        ("GetKey by a user", user.GetKey, pb.KeyRef(name=HUGE)),
        ("GetKey without a tenant, by a user", user.GetKey, pb.KeyRef(name="k" * 10_000)),
        ("Sign", admin.Sign, pb.SignRequest(key=pb.KeyRef(name=HUGE), digest=bytes(32))),
        ("Verify", user.Verify, pb.VerifyRequest(key=pb.KeyRef(name=HUGE), digest=bytes(32), signature=b"x")),
        ("GenerateKey", admin.GenerateKey, pb.GenerateKeyRequest(name=HUGE, algorithm=pb.EC_P256)),
        ("RotateKey", admin.RotateKey, pb.KeyRef(name=HUGE)),
        ("DestroyKey", admin.DestroyKey, pb.KeyRef(name=HUGE)),
        ("Attest", admin.Attest, pb.AttestRequest(key=pb.KeyRef(name=HUGE), nonce=b"n" * 16)),
        ("IssueCertificate key_name", admin.IssueCertificate,
         pb.IssueRequest(key_name=HUGE, algorithm=pb.EC_P256, profile="user", common_name="x")),
        ("ListKeys", admin.ListKeys, pb.ListKeysRequest(tenant="t" * 10_000)),
        ("GenerateKey usage", admin.GenerateKey,
         pb.GenerateKeyRequest(name="acme/u", algorithm=pb.EC_P256, usage=["u" * 10_000])),
        ("IssueCertificate common name", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i", algorithm=pb.EC_P256, profile="user", common_name="c" * 10_000)),
        ("IssueCertificate DNS name", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i", algorithm=pb.EC_P256, profile="user", dns_names=["d" * 10_000])),
        ("IssueCertificate e-mail not allowed", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i", algorithm=pb.EC_P256, profile="server", emails=["e" * 200])),
        ("Revoke serial", admin.Revoke, pb.RevokeRequest(serial_hex="f" * 10_000)),
        ("Revoke reason", admin.Revoke, pb.RevokeRequest(serial_hex="abcdef", reason="r" * 10_000)),
    ]
    wrong = []
    for label, call, request in cases:
        code, details = _status(call, request)
        if code != INVALID or "…" not in details or len(details) > 300 or "\n" in details:
            wrong.append(f"{label}: {code.name} {len(details)} characters {details[:160]!r}")
    code, details = _status(admin.SignCsr, pb.SignCsrRequest(csr_pem=csr, profile="p" * 10_000))
    if code != NOT_FOUND or "…" not in details or len(details) > 300:
        wrong.append(f"SignCsr profile: {code.name} {details[:160]!r}")
    assert not wrong, "\n".join(wrong)
    code, details = _status(admin.GetKey, pb.KeyRef(name=HUGE))
    assert details == f"the key name '{HUGE[:128]}…' is 10005 characters long (at most 192)"
    _assert_healthy(tpm_daemon)


def test_names_are_checked_before_anything_else(tpm_daemon):
    admin, user = tpm_daemon.stub("root"), tpm_daemon.stub("bin")
    admin.GenerateKey(pb.GenerateKeyRequest(name="acme/k", algorithm=pb.EC_P256))
    _expect([
        ("empty key name", admin.GetKey, pb.KeyRef(name=""), INVALID),
        ("empty key name, Sign", user.Sign, pb.SignRequest(digest=bytes(32)), INVALID),
        ("empty tenant", admin.ListKeys, pb.ListKeysRequest(tenant=""), INVALID),
        ("trailing newline", admin.GenerateKey, pb.GenerateKeyRequest(name="acme/k2\n", algorithm=pb.EC_P256),
         INVALID),
        ("trailing newline, existing key", admin.GetKey, pb.KeyRef(name="acme/k\n"), INVALID),
        ("NUL", admin.GetKey, pb.KeyRef(name="acme/k\x00"), INVALID),
        ("upper-case tenant", admin.GetKey, pb.KeyRef(name="ACME/k"), INVALID),
        ("two slashes", admin.GetKey, pb.KeyRef(name="acme/a/b"), INVALID),
        ("no name", admin.GetKey, pb.KeyRef(name="acme/"), INVALID),
        ("name of 129 characters", admin.GetKey, pb.KeyRef(name="acme/" + "n" * 129), INVALID),
        ("tenant of 64 characters", admin.GetKey, pb.KeyRef(name="t" * 64 + "/n"), INVALID),
        ("longest name", admin.GetKey, pb.KeyRef(name="t" * 63 + "/" + "n" * 128), NOT_FOUND),
        ("reserved namespace", admin.GetKey, pb.KeyRef(name="_system/ca"), grpc.StatusCode.PERMISSION_DENIED),
        ("other tenant", user.GetKey, pb.KeyRef(name="other/k"), grpc.StatusCode.PERMISSION_DENIED),
        ("empty serial", admin.Revoke, pb.RevokeRequest(), INVALID),
        ("serial of 41 digits", admin.Revoke, pb.RevokeRequest(serial_hex="1" * 41), INVALID),
        ("empty CSR", admin.SignCsr, pb.SignCsrRequest(profile="user"), INVALID),
        ("empty issue request", admin.IssueCertificate, pb.IssueRequest(), INVALID),
        ("empty profile", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i", algorithm=pb.EC_P256, common_name="i"), NOT_FOUND),
        ("empty DNS name", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i", algorithm=pb.EC_P256, profile="server", dns_names=[""]), INVALID),
        ("non-ASCII e-mail", admin.IssueCertificate,
         pb.IssueRequest(key_name="acme/i", algorithm=pb.EC_P256, profile="user", emails=["ü@acme.example"]),
         INVALID),
        ("empty nonce", admin.Attest, pb.AttestRequest(key=pb.KeyRef(name="acme/k")), INVALID),
        ("empty credential", admin.ActivateCredential, pb.ActivateCredentialRequest(), INVALID),
    ])
    keys = {k.name for k in admin.ListKeys(pb.ListKeysRequest(tenant="acme")).keys}
    assert keys == {"acme/k"}
    _assert_healthy(tpm_daemon)


def test_signing_with_a_missing_version_is_not_found(backend_daemon):
    stub = backend_daemon.stub("daemon")
    stub.GenerateKey(pb.GenerateKeyRequest(name="acme/v", algorithm=pb.EC_P256))
    stub.RotateKey(pb.KeyRef(name="acme/v"))
    digest = hashlib.sha256(b"versions").digest()
    _expect([
        ("Sign version 3", stub.Sign, pb.SignRequest(key=pb.KeyRef(name="acme/v", version=3), digest=digest),
         NOT_FOUND),
        ("Sign version 2^32-1", stub.Sign,
         pb.SignRequest(key=pb.KeyRef(name="acme/v", version=2**32 - 1), digest=digest), NOT_FOUND),
        ("Sign version 1", stub.Sign, pb.SignRequest(key=pb.KeyRef(name="acme/v", version=1), digest=digest),
         grpc.StatusCode.FAILED_PRECONDITION),
        ("Sign version 2", stub.Sign, pb.SignRequest(key=pb.KeyRef(name="acme/v", version=2), digest=digest), OK),
        ("Verify version 3", stub.Verify,
         pb.VerifyRequest(key=pb.KeyRef(name="acme/v", version=3), digest=digest, signature=b"x"), NOT_FOUND),
        ("GetPublicKey version 3", stub.GetPublicKey, pb.KeyRef(name="acme/v", version=3), NOT_FOUND),
    ])
    code, details = _status(stub.Sign, pb.SignRequest(key=pb.KeyRef(name="acme/v", version=3), digest=digest))
    assert details == "key acme/v has no version 3"
    assert stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/v"), digest=digest)).version == 2
    _assert_healthy(backend_daemon)


def test_bytes_that_are_not_a_request(tpm_daemon):
    """Bytes that do not parse as the request message: a field running past the end, a string that is not
    UTF-8."""
    channel = grpc.insecure_channel(f"unix:{tpm_daemon.sockets['root']}")
    not_utf8 = b"\x0a\x04\xff\xfe\xfd\xfc"
    truncated = b"\x0a\x7facme/k"
    service = pb.DESCRIPTOR.services_by_name["Kms"]
    wrong = []
    cases = [(f"/{service.full_name}/{m.name}", truncated) for m in service.methods]
    first_field = {m.name: m.input_type.fields_by_number.get(1) for m in service.methods}
    cases += [(f"/{service.full_name}/{name}", not_utf8) for name, field in first_field.items()
              if field is not None and field.type == FieldDescriptor.TYPE_STRING]
    cases += [("/grpc.health.v1.Health/Check", truncated), ("/grpc.health.v1.Health/Check", not_utf8)]
    assert len(cases) > 30
    for path, data in cases:
        code, details = _status(channel.unary_unary(path), data)
        if code != INVALID or "is not a valid" not in details:
            wrong.append(f"{path} {data!r}: {code.name} {details!r}")
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    with pytest.raises(grpc.RpcError) as err:
        next(iter(watch(not_utf8, timeout=30)))
    assert err.value.code() == INVALID, err.value.details()
    assert not wrong, "\n".join(wrong)
    # the health service still streams
    with grpc.insecure_channel(f"unix:{tpm_daemon.sockets['bin']}") as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"),
                                                      timeout=30)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
    channel.close()
    _assert_healthy(tpm_daemon)


def test_oversized_requests_are_resource_exhausted(tpm_daemon):
    """Above the configured 64 KiB: gRPC refuses them before any handler runs, and logs nothing."""
    admin = tpm_daemon.stub("root")
    big = 70_000
    _expect([
        ("Sign digest", admin.Sign, pb.SignRequest(key=pb.KeyRef(name="acme/k"), digest=bytes(big)),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("GenerateKey name", admin.GenerateKey, pb.GenerateKeyRequest(name="a" * big),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("ActivateCredential blob", admin.ActivateCredential,
         pb.ActivateCredentialRequest(credential_blob=bytes(big)), grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("SignCsr CSR", admin.SignCsr, pb.SignCsrRequest(csr_pem="A" * big, profile="user"),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("Attest PCR list", admin.Attest, pb.AttestRequest(pcrs=[2**32 - 1] * (big // 4)),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        # just under the limit: parsed and refused by the checks
        ("ActivateCredential 60 KB", admin.ActivateCredential,
         pb.ActivateCredentialRequest(credential_blob=bytes(60_000), encrypted_secret=bytes(4000)), INVALID),
        ("SignCsr 60 KB", admin.SignCsr, pb.SignCsrRequest(csr_pem="A" * 60_000, profile="user"), INVALID),
        ("Attest 15000 PCRs", admin.Attest,
         pb.AttestRequest(key=pb.KeyRef(name="acme/k"), nonce=b"n" * 16, pcrs=list(range(15_000))), INVALID),
    ])
    _assert_healthy(tpm_daemon)


def _damaged_der(rng: random.Random, der: bytes) -> bytes:
    data = bytearray(der)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data = data[:rng.randrange(1, len(data))]
    else:
        i = rng.randrange(len(data))
        data[i:i] = rng.randbytes(rng.randint(1, 8))
    return bytes(data)


def _pem(der: bytes, label: str = "CERTIFICATE") -> str:
    return f"-----BEGIN {label}-----\n{base64.encodebytes(der).decode()}-----END {label}-----\n"


@pytest.mark.slow
def test_damaged_ca_certificates_are_refused(tmp_path):
    """InstallCaCertificate under an external root: damaged certificates and chains are INVALID_ARGUMENT."""
    hsm = SoftHsm(tmp_path / "softhsm")
    daemon = Daemon(tmp_path / "kms", pkcs11_backend(hsm), env=hsm.env)
    try:
        daemon.start()
        admin = daemon.stub("root")
        csr = x509.load_pem_x509_csr(admin.InitCa(pb.InitCaRequest(common_name="Intermediate", algorithm=pb.EC_P256,
                                                                   external_root=True)).csr_pem.encode())
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Root")])
        now = datetime.datetime.now(datetime.timezone.utc)

        def certificate(subject, public, issuer, ca=True, basic_constraints=True):
            builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                       .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                       .not_valid_after(now + datetime.timedelta(days=100)))
            if basic_constraints:
                builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            return builder.sign(root_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

        root = certificate(root_name, root_key.public_key(), root_name)
        good = certificate(csr.subject, csr.public_key(), root_name)
        rng = random.Random(1207)
        cases = [(_pem(_damaged_der(rng, good)), _pem(root)) for _ in range(40)]
        cases += [(_pem(good), _pem(_damaged_der(rng, root))) for _ in range(20)]
        cases += [
            (_pem(certificate(csr.subject, csr.public_key(), root_name, ca=False)), _pem(root)),
            (_pem(certificate(csr.subject, csr.public_key(), root_name, basic_constraints=False)), _pem(root)),
            (_pem(certificate(csr.subject, ec.generate_private_key(ec.SECP256R1()).public_key(), root_name)),
             _pem(root)),
            (_pem(good), _pem(certificate(root_name, ec.generate_private_key(ec.SECP256R1()).public_key(),
                                          root_name))),
            (_pem(good, "PRIVATE KEY"), ""),
            ("", ""),
            (_pem(b"\x30\x03\x02\x01\x01"), ""),
        ]
        wrong = []
        for i, (cert_pem, chain_pem) in enumerate(cases):
            code, details = _status(admin.InstallCaCertificate,
                                    pb.InstallCaCertificateRequest(certificate_pem=cert_pem, chain_pem=chain_pem))
            if code != INVALID or "\n" in details:
                wrong.append(f"case {i}: {code.name} {details!r}")
        assert not wrong, "\n".join(wrong)
        admin.InstallCaCertificate(pb.InstallCaCertificateRequest(certificate_pem=_pem(good), chain_pem=_pem(root)))
        issued = daemon.stub("daemon").IssueCertificate(pb.IssueRequest(
            key_name="acme/leaf", algorithm=pb.EC_P256, profile="user", common_name="leaf"))
        x509.load_pem_x509_certificate(issued.certificate.certificate_pem.encode()).verify_directly_issued_by(
            x509.load_der_x509_certificate(good))
        _assert_healthy(daemon)
    finally:
        daemon.kill(signal.SIGTERM)


@pytest.mark.slow
def test_damaged_credentials_are_refused(ek_daemon):
    """ActivateCredential with a damaged credential blob or secret: INVALID_ARGUMENT, never a TPM fault."""
    from segway_kms.attestation import enroll

    ek_daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/device", algorithm=pb.EC_P256))
    user = ek_daemon.stub("bin")
    evidence = user.Attest(pb.AttestRequest(key=pb.KeyRef(name="acme/device"), nonce=b"n" * 16, pcrs=[0]))
    secret, blob, encrypted = enroll.challenge({"ek_public_area": evidence.ek_public_area,
                                                "ak_public_area": evidence.ak_public_area})
    rng = random.Random(1207)
    cases = [(_damaged_der(rng, blob), encrypted) for _ in range(15)]
    cases += [(blob, _damaged_der(rng, encrypted)) for _ in range(15)]
    cases += [(b"", encrypted), (blob, b""), (blob + b"\x00", encrypted), (b"\xff" * len(blob), encrypted)]
    wrong = []
    for i, (b, e) in enumerate(cases):
        code, details = _status(user.ActivateCredential, pb.ActivateCredentialRequest(credential_blob=b,
                                                                                      encrypted_secret=e))
        if code != INVALID:
            wrong.append(f"case {i}: {code.name} {details!r}")
    assert not wrong, "\n".join(wrong)
    answer = user.ActivateCredential(pb.ActivateCredentialRequest(credential_blob=blob, encrypted_secret=encrypted))
    assert enroll.answer_matches(secret, answer.secret)
    _assert_healthy(ek_daemon)
