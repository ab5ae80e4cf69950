"""RBAC denial matrix: every role x every operation, over the per-group Unix sockets."""
from __future__ import annotations

import hashlib

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from segway_kms.api import kms_pb2 as pb

ALL = {"GenerateKey", "ListKeys", "GetKey", "GetPublicKey", "Sign", "Verify", "RotateKey", "DisableKey", "EnableKey",
       "DestroyKey", "InitCa", "InstallCaCertificate", "GetCaCertificate", "SignCsr", "IssueCertificate", "Revoke",
       "GetCrl", "Attest", "ActivateCredential", "GetRandom", "ExportAudit"}
SERVICE_METHODS = {m.name for m in pb.DESCRIPTOR.services_by_name["Kms"].methods}
# Written out by hand (not derived from the server's table) so a change to the policy has to change the test.
ALLOWED = {
    "root": ALL,                                               # admin of every tenant
    "daemon": ALL - {"DestroyKey", "InitCa", "InstallCaCertificate", "ExportAudit"},  # operator of acme + ca
    "bin": {"ListKeys", "GetKey", "GetPublicKey", "Sign", "Verify", "GetCaCertificate", "GetCrl", "Attest",
            "ActivateCredential", "GetRandom"},                # user of acme
    "sys": {"GetCaCertificate", "GetCrl", "ActivateCredential", "GetRandom"},  # admin, but of another tenant
    "adm": set(),                                              # no principal entry
}


def _requests(group: str):
    digest = hashlib.sha256(b"rbac").digest()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rbac{group}")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    return {
        "GenerateKey": pb.GenerateKeyRequest(name=f"acme/new-{group}", algorithm=pb.EC_P256),
        "ListKeys": pb.ListKeysRequest(tenant="acme"),
        "GetKey": pb.KeyRef(name="acme/base"),
        "GetPublicKey": pb.KeyRef(name="acme/base"),
        "Sign": pb.SignRequest(key=pb.KeyRef(name="acme/base"), digest=digest),
        "Verify": pb.VerifyRequest(key=pb.KeyRef(name="acme/base"), digest=digest, signature=b"0"),
        "RotateKey": pb.KeyRef(name="acme/base"),
        "DisableKey": pb.KeyRef(name=f"acme/toggle-{group}"),
        "EnableKey": pb.KeyRef(name=f"acme/toggle-{group}"),
        "DestroyKey": pb.KeyRef(name=f"acme/victim-{group}"),
        "InitCa": pb.InitCaRequest(common_name="again", algorithm=pb.EC_P256),
        "InstallCaCertificate": pb.InstallCaCertificateRequest(certificate_pem="x"),
        "GetCaCertificate": pb.Empty(),
        "SignCsr": pb.SignCsrRequest(csr_pem=csr, profile="user"),
        "IssueCertificate": pb.IssueRequest(key_name=f"acme/issued-{group}", algorithm=pb.EC_P256, profile="user",
                                            common_name=f"rbac{group}"),
        "Revoke": pb.RevokeRequest(serial_hex="abcdef0123456789"),
        "GetCrl": pb.Empty(),
        "Attest": pb.AttestRequest(key=pb.KeyRef(name="acme/base"), nonce=b"n" * 16, pcrs=[0]),
        "ActivateCredential": pb.ActivateCredentialRequest(credential_blob=b"x", encrypted_secret=b"y"),
        "GetRandom": pb.RandomRequest(length=8),
        "ExportAudit": pb.AuditExportRequest(),
    }


def matrix_failures(who: str, stub, requests: dict, allowed: set, timeout: float) -> list[str]:
    """Each request on ``stub``: "<who> <method>: <code>" where a refusal (PERMISSION_DENIED) and
    ``allowed`` disagree. A server that does not answer (UNAVAILABLE) is never a refusal."""
    failures = []
    for method, request in requests.items():
        try:
            getattr(stub, method)(request, timeout=timeout)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code != grpc.StatusCode.UNAVAILABLE, f"{who} {method}: the server did not answer"
        if (code == grpc.StatusCode.PERMISSION_DENIED) == (method in allowed):
            failures.append(f"{who} {method}: {code.name}")
    return failures


@pytest.mark.slow
def test_every_role_against_every_operation(tpm_daemon):
    admin = tpm_daemon.stub("root")
    admin.GenerateKey(pb.GenerateKeyRequest(name="acme/base", algorithm=pb.EC_P256))
    for group in ALLOWED:
        admin.GenerateKey(pb.GenerateKeyRequest(name=f"acme/toggle-{group}", algorithm=pb.EC_P256))
        admin.GenerateKey(pb.GenerateKeyRequest(name=f"acme/victim-{group}", algorithm=pb.EC_P256))
    failures = []
    for group, allowed in ALLOWED.items():
        stub = tpm_daemon.stub(group)
        requests = _requests(group)
        assert set(requests) == ALL == SERVICE_METHODS  # every RPC of the service is in the matrix
        failures += matrix_failures(group, stub, requests, allowed, timeout=60)
    assert not failures, failures
    # the denials left no trace in the key store
    names = {k.name for k in admin.ListKeys(pb.ListKeysRequest(tenant="acme")).keys}
    assert "acme/new-bin" not in names and "acme/new-daemon" in names
    assert admin.GetKey(pb.KeyRef(name="acme/victim-daemon")).state == pb.ENABLED
    assert admin.GetKey(pb.KeyRef(name="acme/victim-root")).state == pb.DESTROYED


def test_wrong_tenant_and_reserved_namespace(tpm_daemon):
    admin = tpm_daemon.stub("root")
    admin.GenerateKey(pb.GenerateKeyRequest(name="other/secret", algorithm=pb.EC_P256))
    with pytest.raises(grpc.RpcError) as err:  # operator of acme, not of other
        tpm_daemon.stub("daemon").Sign(pb.SignRequest(key=pb.KeyRef(name="other/secret"), digest=bytes(32)))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:  # the CA and audit keys are not addressable, even by an admin
        admin.Sign(pb.SignRequest(key=pb.KeyRef(name="_system/ca"), digest=bytes(32)))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
