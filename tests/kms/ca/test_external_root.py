"""CA under an external root: CSR out of the KMS, certificate and chain back in, leaf chains to the root."""
from __future__ import annotations

import datetime
import signal
import subprocess

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from segway_kms.api import kms_pb2 as pb

from ..conftest import Daemon, SoftHsm, pkcs11_backend


def _root():
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Offline Root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return key, cert


def _sign_intermediate(root_key, root, csr):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(root.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA384()))


@pytest.mark.slow
def test_intermediate_ca_under_external_root(tmp_path):
    hsm = SoftHsm(tmp_path / "softhsm")
    daemon = Daemon(tmp_path / "kms", pkcs11_backend(hsm), env=hsm.env)
    try:
        daemon.start()
        admin = daemon.stub("root")
        resp = admin.InitCa(pb.InitCaRequest(common_name="Gateway Intermediate", algorithm=pb.EC_P384,
                                             external_root=True))
        assert not resp.certificate_pem
        csr = x509.load_pem_x509_csr(resp.csr_pem.encode())
        assert csr.is_signature_valid
        with pytest.raises(grpc.RpcError) as err:  # no certificate yet: issuing is refused
            daemon.stub("daemon").IssueCertificate(pb.IssueRequest(key_name="acme/x", algorithm=pb.EC_P256,
                                                                   profile="user", common_name="x"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        root_key, root = _root()
        root_pem = root.public_bytes(serialization.Encoding.PEM).decode()
        # a certificate for some other key is refused
        other = ec.generate_private_key(ec.SECP256R1())
        foreign_csr = (x509.CertificateSigningRequestBuilder().subject_name(csr.subject).sign(other, hashes.SHA256()))
        foreign = _sign_intermediate(root_key, root, foreign_csr)
        with pytest.raises(grpc.RpcError) as err:
            admin.InstallCaCertificate(pb.InstallCaCertificateRequest(
                certificate_pem=foreign.public_bytes(serialization.Encoding.PEM).decode(), chain_pem=root_pem))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        inter = _sign_intermediate(root_key, root, csr)
        admin.InstallCaCertificate(pb.InstallCaCertificateRequest(
            certificate_pem=inter.public_bytes(serialization.Encoding.PEM).decode(), chain_pem=root_pem))
        issued = daemon.stub("daemon").IssueCertificate(pb.IssueRequest(
            key_name="acme/carol", algorithm=pb.EC_P256, profile="user", common_name="carol",
            emails=["carol@acme.example"]))
        (tmp_path / "root.pem").write_text(root_pem)
        (tmp_path / "chain.pem").write_text(issued.certificate.chain_pem)
        (tmp_path / "carol.pem").write_text(issued.certificate.certificate_pem)
        assert "Offline Root" in x509.load_pem_x509_certificates(issued.certificate.chain_pem.encode())[-1] \
            .subject.rfc4514_string()
        out = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "root.pem", "-untrusted",
                              tmp_path / "chain.pem", tmp_path / "carol.pem"], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        crl = x509.load_der_x509_crl(admin.GetCrl(pb.Empty()).crl_der)
        assert crl.is_signature_valid(inter.public_key()) and crl.issuer == inter.subject
    finally:
        daemon.kill(signal.SIGTERM)
