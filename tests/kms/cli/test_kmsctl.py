"""segway-kmsctl end to end: the README flow (issue a user certificate), signing checked by openssl."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_issue_user_certificate_and_sign_with_cli(tpm_daemon, tmp_path):
    d = tpm_daemon
    # the user makes a key and a CSR with openssl; the private key never reaches the KMS
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", tmp_path / "bob.key", "-subj", "/CN=bob", "-addext",
                    "subjectAltName=email:bob@acme.example", "-out", tmp_path / "bob.csr"], check=True,
                   capture_output=True)
    d.ctl("ca", "cert", "-o", tmp_path / "ca.pem", group="bin")
    r = d.ctl("ca", "sign-csr", tmp_path / "bob.csr", "--profile", "user", "--days", "30", "-o", tmp_path / "bob.pem",
              group="daemon")
    serial = r.stderr.decode().split()[-1]
    v = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "bob.pem"],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr

    # a key in the TPM signs a file; openssl checks the signature with the exported public key
    d.ctl("key", "generate", "acme/release", "--algorithm", "RSA_2048", group="daemon")
    d.ctl("key", "public", "acme/release", "-o", tmp_path / "release.pub", group="bin")
    (tmp_path / "artifact").write_bytes(b"firmware image" * 1000)
    d.ctl("key", "sign", "acme/release", "--input", tmp_path / "artifact", "-o", tmp_path / "artifact.sig", group="bin")
    v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", tmp_path / "release.pub", "-signature",
                        tmp_path / "artifact.sig", tmp_path / "artifact"], capture_output=True, text=True)
    assert v.returncode == 0 and "Verified OK" in v.stdout
    assert b"valid" in d.ctl("key", "verify", "acme/release", tmp_path / "artifact.sig", "--input",
                             tmp_path / "artifact", group="bin").stdout
    listing = d.ctl("key", "list", "acme", group="bin").stdout.decode().splitlines()
    assert listing[0].split() == ["NAME", "ALGORITHM", "STATE", "VERSION", "USAGE"]
    assert ["acme/release", "RSA_2048", "ENABLED"] in [line.split()[:3] for line in listing[1:]]

    # bob's certificate is his identity on the mTLS listener (principal = his e-mail SAN)
    port = (d.state / "tcp.port").read_text().strip()
    remote = [sys.executable, "-c", "from segway_kms.cli.main import run; run()", "--address", f"127.0.0.1:{port}",
              "--ca", tmp_path / "ca.pem", "--cert", tmp_path / "bob.pem", "--key", tmp_path / "bob.key",
              "--server-name", "kms.local"]
    r = subprocess.run(remote + ["key", "list", "acme"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "acme/release" in r.stdout, r.stderr
    r = subprocess.run(remote + ["key", "destroy", "acme/release"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr

    d.ctl("ca", "revoke", serial, "--reason", "superseded", group="daemon")
    d.ctl("ca", "crl", "-o", tmp_path / "crl.pem", group="bin")
    v = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", tmp_path / "ca.pem", "-CRLfile",
                        tmp_path / "crl.pem", tmp_path / "bob.pem"], capture_output=True, text=True)
    assert v.returncode != 0 and "revoked" in v.stdout + v.stderr


def test_cli_errors_are_one_line(tpm_daemon, tmp_path):
    r = tpm_daemon.ctl("key", "sign", "acme/nope", "--digest", "00" * 32, "-o", tmp_path / "sig", check=False)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "segway-kmsctl: NOT_FOUND: no key named acme/nope"
    assert not (tmp_path / "sig").exists()
    r = tpm_daemon.ctl("key", "sign", "acme/nope", "--input", tmp_path / "missing", "-o", tmp_path / "sig",
                       check=False)
    assert r.returncode != 0 and b"cannot read" in r.stderr and b"Traceback" not in r.stderr
    r = tpm_daemon.ctl("key", "generate", "other/x", group="bin", check=False)
    assert r.returncode == 1 and b"PERMISSION_DENIED" in r.stderr


def test_out_of_range_numbers_are_usage_errors(tpm_daemon):
    """Outside the request field's type: click refuses it (exit 2); inside it: the daemon judges it."""
    for args in (["random", "--", "-1"], ["random", str(2**32)], ["key", "public", "acme/k", "--version", "-1"],
                 ["key", "generate", "acme/k", "--expires", str(2**63)], ["ca", "init", "X", "--days", str(2**32)]):
        r = tpm_daemon.ctl(*args, check=False)
        assert r.returncode == 2 and b"is not in the range" in r.stderr and b"Traceback" not in r.stderr, r.stderr
    r = tpm_daemon.ctl("random", str(2**32 - 1), check=False)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "segway-kmsctl: INVALID_ARGUMENT: length must be 1 to 1024"
    r = tpm_daemon.ctl("key", "generate", "acme/k", "--expires", str(2**63 - 1), check=False)
    assert r.returncode == 1 and b"INVALID_ARGUMENT: expires" in r.stderr and r.stderr.count(b"\n") == 1
