"""Full API round trips over the Unix socket and mTLS, on swtpm and on SoftHSM."""
from __future__ import annotations

import hashlib
import subprocess
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.x509.oid import NameOID

from segway_kms.api import kms_pb2 as pb
from segway_kms.api import kms_pb2_grpc
from segway_kms.backends.keys import verify_digest


def _pub(stub, name, version=0):
    return serialization.load_der_public_key(stub.GetPublicKey(pb.KeyRef(name=name, version=version)).public_key_der)


@pytest.mark.slow
def test_key_lifecycle_round_trip(backend_daemon):
    stub = backend_daemon.stub("daemon")  # operator of tenant acme
    for name, alg in (("acme/ec256", pb.EC_P256), ("acme/ec384", pb.EC_P384), ("acme/rsa2048", pb.RSA_2048)):
        info = stub.GenerateKey(pb.GenerateKeyRequest(name=name, algorithm=alg))
        assert info.state == pb.ENABLED and info.primary_version == 1
        assert info.backend == backend_daemon.backend_name
        public = _pub(stub, name)
        for size, h in ((32, hashes.SHA256()), (48, hashes.SHA384())):
            digest = hashlib.new(h.name, b"payload " + name.encode()).digest()
            schemes = [pb.SCHEME_DEFAULT] if alg in (pb.EC_P256, pb.EC_P384) else [pb.RSA_PKCS1V15, pb.RSA_PSS]
            for scheme in schemes:
                sig = stub.Sign(pb.SignRequest(key=pb.KeyRef(name=name), digest=digest, scheme=scheme)).signature
                # verified by cryptography, independently of the service
                pre = utils.Prehashed(h)
                if isinstance(public, ec.EllipticCurvePublicKey):
                    public.verify(sig, digest, ec.ECDSA(pre))
                elif scheme == pb.RSA_PSS:
                    public.verify(sig, digest, padding.PSS(padding.MGF1(h), size), pre)
                else:
                    public.verify(sig, digest, padding.PKCS1v15(), pre)
                assert stub.Verify(pb.VerifyRequest(key=pb.KeyRef(name=name), digest=digest, signature=sig,
                                                    scheme=scheme)).valid
                assert not stub.Verify(pb.VerifyRequest(key=pb.KeyRef(name=name), digest=bytes(size),
                                                        signature=sig, scheme=scheme)).valid
    names = [k.name for k in stub.ListKeys(pb.ListKeysRequest(tenant="acme")).keys]
    assert names == ["acme/ec256", "acme/ec384", "acme/rsa2048"]

    # rotate: new primary version, the old one still verifies but no longer signs
    digest = hashlib.sha256(b"before rotation").digest()
    old_sig = stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/ec256"), digest=digest)).signature
    rotated = stub.RotateKey(pb.KeyRef(name="acme/ec256"))
    assert rotated.primary_version == 2 and len(rotated.versions) == 2
    assert rotated.versions[0].public_key_der != rotated.versions[1].public_key_der
    assert stub.Verify(pb.VerifyRequest(key=pb.KeyRef(name="acme/ec256", version=1), digest=digest,
                                        signature=old_sig)).valid
    new = stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/ec256"), digest=digest))
    assert new.version == 2
    assert verify_digest(rotated.versions[1].public_key_der, digest, new.signature, "ecdsa")
    with pytest.raises(grpc.RpcError) as err:
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/ec256", version=1), digest=digest))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # disable / enable / destroy
    stub.DisableKey(pb.KeyRef(name="acme/ec384"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/ec384"), digest=digest))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.EnableKey(pb.KeyRef(name="acme/ec384"))
    stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/ec384"), digest=digest))
    admin = backend_daemon.stub("root")
    assert admin.DestroyKey(pb.KeyRef(name="acme/ec384")).state == pb.DESTROYED
    with pytest.raises(grpc.RpcError) as err:
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/ec384"), digest=digest))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # expired key
    expires = int(time.time()) + 5
    stub.GenerateKey(pb.GenerateKeyRequest(name="acme/short", algorithm=pb.EC_P256, expires=expires))
    stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/short"), digest=digest))
    time.sleep(max(0.0, expires - time.time() + 0.5))
    with pytest.raises(grpc.RpcError) as err:
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/short"), digest=digest))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # verify-only usage
    stub.GenerateKey(pb.GenerateKeyRequest(name="acme/vonly", algorithm=pb.EC_P256, usage=["verify"]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/vonly"), digest=digest))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    rnd = stub.GetRandom(pb.RandomRequest(length=64)).data
    assert len(rnd) == 64 and rnd != stub.GetRandom(pb.RandomRequest(length=64)).data


def _csr(key, cn, sans=()):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(s) for s in sans]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.slow
def test_ca_issue_verify_revoke_and_mtls(backend_daemon, tmp_path):
    admin, operator = backend_daemon.stub("root"), backend_daemon.stub("daemon")
    ca_pem = admin.GetCaCertificate(pb.Empty()).certificate_pem.encode()
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    (tmp_path / "ca.pem").write_bytes(ca_pem)

    # a user certificate from a CSR; the user keeps the private key
    user_key = ec.generate_private_key(ec.SECP256R1())
    resp = operator.SignCsr(pb.SignCsrRequest(csr_pem=_csr(user_key, "alice", ["alice@acme.example"]), profile="user",
                                              validity_days=30))
    cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert cert.serial_number.bit_length() >= 64
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    (tmp_path / "alice.pem").write_text(resp.certificate_pem)
    out = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.pem", "-purpose", "sslclient",
                          tmp_path / "alice.pem"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (tmp_path / "alice.key").write_bytes(user_key.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))

    # server-side key generation: the key stays in the backend, the certificate is for it
    issued = operator.IssueCertificate(pb.IssueRequest(key_name="acme/web", algorithm=pb.EC_P256, profile="server",
                                                       common_name="www.acme.example", dns_names=["www.acme.example"]))
    web = x509.load_pem_x509_certificate(issued.certificate.certificate_pem.encode())
    assert web.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == issued.key.versions[0].public_key_der
    (tmp_path / "web.pem").write_text(issued.certificate.certificate_pem)
    assert subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.pem", "-purpose", "sslserver",
                           tmp_path / "web.pem"], capture_output=True).returncode == 0

    # profile violations
    for csr, profile in ((_csr(user_key, "mallory", ["mallory@evil.example"]), "user"),
                         (_csr(user_key, "alice", ["alice@acme.example"]), "server")):
        with pytest.raises(grpc.RpcError) as err:
            operator.SignCsr(pb.SignCsrRequest(csr_pem=csr, profile=profile))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        operator.SignCsr(pb.SignCsrRequest(csr_pem=_csr(user_key, "alice"), profile="user", validity_days=9999))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # mTLS: alice's certificate is her identity on the TCP listener
    port = int((backend_daemon.state / "tcp.port").read_text())
    creds = grpc.ssl_channel_credentials(ca_pem, (tmp_path / "alice.key").read_bytes(), resp.certificate_pem.encode())
    ch = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "kms.local")])
    alice = kms_pb2_grpc.KmsStub(ch)
    digest = hashlib.sha256(b"over mTLS").digest()
    sig = alice.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/web"), digest=digest)).signature
    web.public_key().verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    with pytest.raises(grpc.RpcError) as err:  # a user may not generate keys
        alice.GenerateKey(pb.GenerateKeyRequest(name="acme/nope", algorithm=pb.EC_P256))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # the listener's key exists only in the daemon's memory: nothing in the state directory holds a private key
    assert not [f for f in backend_daemon.state.rglob("*") if f.is_file() and b"PRIVATE KEY" in f.read_bytes()]

    # a client without a certificate never gets in
    bare = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca_pem),
                               options=[("grpc.ssl_target_name_override", "kms.local")])
    with pytest.raises(grpc.RpcError) as err:
        kms_pb2_grpc.KmsStub(bare).GetRandom(pb.RandomRequest(length=8), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # revoke alice: the CRL lists her, openssl agrees, and her certificate no longer opens the API
    operator.Revoke(pb.RevokeRequest(serial_hex=resp.serial_hex, reason="keyCompromise"))
    crl_resp = operator.GetCrl(pb.Empty())
    crl = x509.load_der_x509_crl(crl_resp.crl_der)
    assert crl.is_signature_valid(ca.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(web.serial_number) is None
    (tmp_path / "crl.pem").write_text(crl_resp.crl_pem)
    out = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", tmp_path / "ca.pem", "-CRLfile",
                          tmp_path / "crl.pem", tmp_path / "alice.pem"], capture_output=True, text=True)
    assert out.returncode != 0 and "revoked" in (out.stdout + out.stderr)
    assert subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", tmp_path / "ca.pem", "-CRLfile",
                           tmp_path / "crl.pem", tmp_path / "web.pem"], capture_output=True).returncode == 0
    assert subprocess.run(["openssl", "crl", "-in", tmp_path / "crl.pem", "-noout", "-CAfile", tmp_path / "ca.pem"],
                          capture_output=True).returncode == 0
    with pytest.raises(grpc.RpcError) as err:
        kms_pb2_grpc.KmsStub(grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
            ("grpc.ssl_target_name_override", "kms.local")])).GetRandom(pb.RandomRequest(length=8))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        operator.Revoke(pb.RevokeRequest(serial_hex="1234567890abcdef", reason="keyCompromise"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
