"""TPM attestation: TPM2_Certify + quote from the daemon, verified host-side by `segway-kmsctl attest verify`."""
from __future__ import annotations

import json
import signal
import subprocess

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from segway_kms.api import kms_pb2 as pb

from ..conftest import Daemon, SoftHsm, Swtpm, pkcs11_backend, tpm_backend


def _edit(path, field, value):
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))


@pytest.mark.slow
def test_attest_key_and_verify_on_host(ek_daemon, tmp_path):
    ek_daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/device", algorithm=pb.EC_P256))
    bundle = tmp_path / "ek-ca.pem"
    bundle.write_bytes(ek_daemon.swtpm.ek_ca_bundle)
    evidence = tmp_path / "evidence.json"
    ek_daemon.ctl("attest", "key", "acme/device", "--pcrs", "0,1,7", "-o", evidence, group="bin")
    doc = json.loads(evidence.read_text())
    ek = x509.load_der_x509_certificate(bytes.fromhex(doc["ek_certificate_der"]))
    # the EK certificate chains to the swtpm-localca root, as openssl sees it too
    (tmp_path / "ek.pem").write_bytes(ek.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(["openssl", "verify", "-partial_chain", "-CAfile", bundle, tmp_path / "ek.pem"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

    ok = ek_daemon.ctl("attest", "verify", evidence, "--ek-ca", bundle)
    assert b"attestation OK" in ok.stdout

    # enrol the AK (credential activation by the daemon's TPM), then pin it
    ak = tmp_path / "ak.pem"
    ek_daemon.ctl("attest", "enroll", evidence, "--ek-ca", bundle, "-o", ak, group="bin")
    assert b"attestation OK" in ek_daemon.ctl("attest", "verify", evidence, "--ek-ca", bundle, "--ak", ak).stdout
    other_ak = tmp_path / "other-ak.pem"
    other_ak.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    r = ek_daemon.ctl("attest", "verify", evidence, "--ak", other_ak, check=False)
    assert r.returncode == 1 and b"not the pinned attestation key" in r.stdout

    # every piece of evidence matters
    for field, value in (("nonce", "00" * 16),                      # replay with another nonce
                         ("key_public_der", _other_key_der()),      # claim another key
                         ("pcr_values", {"0": "11" * 32, "1": doc["pcr_values"]["1"], "7": doc["pcr_values"]["7"]})):
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(evidence.read_text())
        _edit(bad, field, value)
        r = ek_daemon.ctl("attest", "verify", bad, "--ek-ca", bundle, check=False)
        assert r.returncode == 1 and b"FAIL" in r.stdout, field
    flipped = bytearray.fromhex(doc["certify_info"])
    flipped[-1] ^= 1
    bad = tmp_path / "bad-certify.json"
    bad.write_text(evidence.read_text())
    _edit(bad, "certify_info", flipped.hex())
    r = ek_daemon.ctl("attest", "verify", bad, check=False)
    assert r.returncode == 1 and b"AK signature does not verify" in r.stdout
    # an EK CA the certificate does not chain to
    wrong = tmp_path / "wrong-ca.pem"
    wrong.write_bytes((tmp_path / "ek.pem").read_bytes())
    r = ek_daemon.ctl("attest", "verify", evidence, "--ek-ca", wrong, check=False)
    assert r.returncode == 1 and b"does not chain" in r.stdout


def _other_key_der() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def test_pkcs11_backend_refuses_attestation(tmp_path):
    hsm = SoftHsm(tmp_path / "softhsm")
    daemon = Daemon(tmp_path / "kms", pkcs11_backend(hsm), env=hsm.env)
    try:
        daemon.start()
        stub = daemon.stub("root")
        stub.GenerateKey(pb.GenerateKeyRequest(name="acme/k", algorithm=pb.EC_P256))
        with pytest.raises(grpc.RpcError) as err:
            stub.Attest(pb.AttestRequest(key=pb.KeyRef(name="acme/k"), nonce=b"n" * 16))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        daemon.kill(signal.SIGTERM)


def test_credential_for_another_tpm_is_not_recovered(ek_daemon, tmp_path):
    """A MakeCredential challenge against a different EK cannot be answered by this TPM."""
    from segway_kms.attestation import enroll

    ek_daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/device", algorithm=pb.EC_P256))
    resp = ek_daemon.stub("bin").Attest(pb.AttestRequest(key=pb.KeyRef(name="acme/device"), nonce=b"n" * 16,
                                                         pcrs=[0]))
    other = Swtpm(tmp_path / "other-swtpm", ek_cert=True)
    try:
        other_daemon = Daemon(tmp_path / "other-kms", tpm_backend(other)).start()
        other_daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/d", algorithm=pb.EC_P256))
        foreign = other_daemon.stub("bin").Attest(pb.AttestRequest(key=pb.KeyRef(name="acme/d"), nonce=b"n" * 16,
                                                                   pcrs=[0]))
        other_daemon.kill(signal.SIGTERM)
    finally:
        other.stop()
    # this TPM's AK, but the other TPM's EK: the secret must not come back
    _secret, blob, encrypted = enroll.challenge({"ek_public_area": foreign.ek_public_area,
                                                 "ak_public_area": resp.ak_public_area})
    with pytest.raises(grpc.RpcError) as err:
        ek_daemon.stub("bin").ActivateCredential(pb.ActivateCredentialRequest(credential_blob=blob,
                                                                              encrypted_secret=encrypted))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # and the genuine pair works
    secret, blob, encrypted = enroll.challenge({"ek_public_area": resp.ek_public_area,
                                                "ak_public_area": resp.ak_public_area})
    answer = ek_daemon.stub("bin").ActivateCredential(pb.ActivateCredentialRequest(
        credential_blob=blob, encrypted_secret=encrypted)).secret
    assert enroll.answer_matches(secret, answer)
