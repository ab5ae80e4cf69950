"""segway-kmsctl behaviour against a real daemon: which transport it uses, --json, no silent overwrite,
openssl's serial forms, attestation without a trust anchor; and segway-kmsd refusing unknown config keys."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from cryptography import x509

from segway_kms.api import kms_pb2 as pb

from ..conftest import Daemon, wait_for

CTL = [sys.executable, "-c", "from segway_kms.cli.main import run; run()"]


def ctl(*args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEGWAY_KMS_")}
    return subprocess.run([*CTL, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=dict(base, **(env or {})), cwd=cwd)


def one_line_error(r, rc=None):
    if isinstance(r.stderr, bytes):
        r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
    assert "Traceback" not in r.stderr + r.stdout
    if rc is not None:
        assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("segway-kmsctl: "), r.stderr
    return r.stderr.strip()


@pytest.fixture
def soft_daemon(tmp_path):
    """A daemon on the software backend with its CA initialised and the mTLS listener up, plus an mTLS
    client certificate for alice (a user of tenant acme)."""
    d = Daemon(tmp_path / "kms", {"type": "software"}, tcp=True)
    try:
        d.start()
        d.ctl("ca", "init", "--cn", "Test CA", "-o", tmp_path / "ca.pem")
        wait_for(lambda: (d.state / "tcp.port").exists(), what="mTLS listener")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", tmp_path / "alice.key", "-subj", "/CN=alice", "-addext",
                        "subjectAltName=email:alice@acme.example", "-out", tmp_path / "alice.csr"], check=True,
                       capture_output=True)
        d.ctl("ca", "sign-csr", tmp_path / "alice.csr", "--profile", "user", "-o", tmp_path / "alice.pem")
        d.mtls = ["--address", f"127.0.0.1:{(d.state / 'tcp.port').read_text().strip()}", "--ca", tmp_path / "ca.pem",
                  "--cert", tmp_path / "alice.pem", "--key", tmp_path / "alice.key", "--server-name", "kms.local"]
        yield d
    finally:
        d.kill(signal.SIGTERM)


def test_explicit_transport_wins_over_the_environment(soft_daemon, tmp_path):
    d = soft_daemon
    admin_socket = str(d.sockets["root"])
    d.ctl("key", "generate", "acme/k")
    # SEGWAY_KMS_SOCKET (the admin socket) is exported, but --address on the command line wins: alice, a
    # user, is refused what only an admin may do
    r = ctl(*d.mtls, "key", "destroy", "acme/k", env={"SEGWAY_KMS_SOCKET": admin_socket})
    assert one_line_error(r, 1) == ("segway-kmsctl: PERMISSION_DENIED: alice@acme.example may not DestroyKey in "
                                    "'acme' (needs admin)")
    assert ctl(*d.mtls, "key", "list", "acme", env={"SEGWAY_KMS_SOCKET": admin_socket}).returncode == 0
    # and --socket on the command line wins over SEGWAY_KMS_ADDRESS
    r = ctl("--socket", d.sockets["bin"], "key", "list", "acme", env={"SEGWAY_KMS_ADDRESS": "127.0.0.1:1"})
    assert r.returncode == 0 and "acme/k" in r.stdout, r.stderr
    # both explicit forms: an error that names them; nothing is sent
    r = ctl("--socket", admin_socket, *d.mtls, "key", "destroy", "acme/k")
    assert one_line_error(r, 2) == "segway-kmsctl: give either --socket or --address, not both"
    # both variables and no option: ambiguous
    r = ctl("key", "list", "acme", env={"SEGWAY_KMS_SOCKET": admin_socket, "SEGWAY_KMS_ADDRESS": "127.0.0.1:1"})
    assert "SEGWAY_KMS_SOCKET and SEGWAY_KMS_ADDRESS" in one_line_error(r, 2)
    # a client certificate on the command line but the socket from the environment: refused, not ignored
    r = ctl("--cert", tmp_path / "alice.pem", "--key", tmp_path / "alice.key", "key", "list", "acme",
            env={"SEGWAY_KMS_SOCKET": admin_socket})
    msg = one_line_error(r, 2)
    assert "--cert, --key" in msg and "SEGWAY_KMS_SOCKET" in msg and "--address" in msg
    r = ctl("key", "list", "acme")
    assert "give --socket PATH or --address HOST:PORT" in one_line_error(r, 2)
    assert d.stub().GetKey(pb.KeyRef(name="acme/k")).state == pb.ENABLED


def test_outputs_are_not_replaced_without_force(tmp_path):
    d = Daemon(tmp_path / "kms", {"type": "software"})
    try:
        d.start()
        ca = tmp_path / "ca.pem"
        ca.write_text("keep me\n")
        # refused before the daemon is asked: the CA is not created by the refused call
        r = d.ctl("ca", "init", "--cn", "Test CA", "-o", ca, check=False)
        assert one_line_error(r, 2) == f"segway-kmsctl: {ca} exists: give --force to replace it"
        assert ca.read_text() == "keep me\n"
        assert "FAILED_PRECONDITION" in one_line_error(d.ctl("ca", "cert", check=False), 1)
        d.ctl("ca", "init", "--cn", "Test CA", "-o", ca, "--force")
        x509.load_pem_x509_certificate(ca.read_bytes())
        d.ctl("key", "generate", "acme/k")
        sig = tmp_path / "sig"
        d.ctl("key", "sign", "acme/k", "--digest", "00" * 32, "-o", sig)
        first = sig.read_bytes()
        r = d.ctl("key", "sign", "acme/k", "--digest", "11" * 32, "-o", sig, check=False)
        assert "exists: give --force" in one_line_error(r, 2) and sig.read_bytes() == first
        d.ctl("key", "sign", "acme/k", "--digest", "11" * 32, "-o", sig, "--force")
        assert sig.read_bytes() != first
        for args in (["key", "public", "acme/k", "-o", sig], ["ca", "crl", "-o", sig], ["ca", "cert", "-o", sig],
                     ["audit", "export", "-o", tmp_path / "new.jsonl", "--public-key-output", sig]):
            r = d.ctl(*args, check=False)
            assert "exists: give --force" in one_line_error(r, 2), args
        assert not (tmp_path / "new.jsonl").exists()
        # parent directories are created for a new output
        d.ctl("key", "public", "acme/k", "-o", tmp_path / "new" / "dir" / "k.pem")
        assert (tmp_path / "new" / "dir" / "k.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    finally:
        d.kill(signal.SIGTERM)


def test_revoke_accepts_openssl_serial_forms(soft_daemon, tmp_path):
    d = soft_daemon
    certs = []
    for i in range(4):
        out = tmp_path / f"c{i}.pem"
        d.ctl("ca", "issue", f"acme/c{i}", "--profile", "user", "--cn", f"c{i}", "-o", out)
        certs.append(out)
    text = [subprocess.run(["openssl", "x509", "-in", c, "-noout", "-text"], capture_output=True, text=True,
                           check=True).stdout for c in certs]
    colon = [t.split("Serial Number:")[1].split()[0] for t in text]  # 4a:1b:... as openssl -text prints it
    assert all(":" in s for s in colon)
    plain = [subprocess.run(["openssl", "x509", "-in", c, "-noout", "-serial"], capture_output=True, text=True,
                            check=True).stdout.strip() for c in certs]  # serial=4A1B...
    forms = [colon[0].upper(), colon[1].lower(), plain[2], plain[3].split("=")[1].lower()]
    for form, cert in zip(forms, certs):
        r = d.ctl("ca", "revoke", form, "--reason", "superseded", check=False)
        assert r.returncode == 0, (form, r.stderr)
    d.ctl("ca", "crl", "-o", tmp_path / "crl.pem")
    for cert in certs:
        v = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", tmp_path / "ca.pem", "-CRLfile",
                            tmp_path / "crl.pem", cert], capture_output=True, text=True)
        assert v.returncode != 0 and "revoked" in v.stdout + v.stderr
    for bad in ("4A:1B:ZZ", "4A::1B", "123:4", "xyz", ""):
        r = d.ctl("ca", "revoke", bad, check=False)
        assert "neither hexadecimal" in one_line_error(r, 2), bad
    r = d.ctl("ca", "revoke", colon[0], check=False)
    assert "already revoked" in one_line_error(r, 1)


def test_json_output_and_json_errors(soft_daemon, tmp_path):
    d = soft_daemon

    def js(*args, group="root", rc=0):
        r = d.ctl("--json", *args, group=group, check=False)
        assert r.returncode == rc, (args, r.stdout, r.stderr)
        assert b"Traceback" not in r.stderr
        lines = r.stdout.decode().splitlines()
        assert len(lines) == 1, r.stdout
        return json.loads(lines[0])

    key = js("key", "generate", "acme/j", "--algorithm", "EC_P384")
    assert key["name"] == "acme/j" and key["algorithm"] == "EC_P384" and key["state"] == "ENABLED"
    assert [k["name"] for k in js("key", "list", "acme")["keys"]] == ["acme/j"]
    assert js("key", "show", "acme/j")["primary_version"] == 1
    assert js("key", "rotate", "acme/j")["primary_version"] == 2
    assert len(bytes.fromhex(js("random", "16")["data"])) == 16
    assert js("health") == {"status": "SERVING"}
    assert js("key", "public", "acme/j")["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    signed = js("key", "sign", "acme/j", "--digest", "00" * 48, "--hash", "sha384", "-o", tmp_path / "j.sig")
    assert signed["output"] == str(tmp_path / "j.sig")
    assert js("key", "verify", "acme/j", tmp_path / "j.sig", "--digest", "00" * 48)["valid"] is True
    assert js("key", "verify", "acme/j", tmp_path / "j.sig", "--digest", "11" * 48, rc=1)["code"] == \
        "INVALID_SIGNATURE"
    cert = js("ca", "issue", "acme/jc", "--profile", "user", "--cn", "jc", "-o", tmp_path / "jc.pem")
    assert cert["subject"] == "CN=jc" and cert["output"] == str(tmp_path / "jc.pem") and cert["serial"]
    assert js("ca", "revoke", cert["serial"])["revoked"] == cert["serial"]
    assert js("ca", "cert")["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    exported = js("audit", "export", "-o", tmp_path / "a.jsonl", "--public-key-output", tmp_path / "a.pem")
    assert exported["entries"] > 0 and exported["head"]
    verified = js("audit", "verify", tmp_path / "a.jsonl", "--public-key", tmp_path / "a.pem", "--head",
                  exported["head"])
    assert verified["ok"] is True and verified["entries"] == exported["entries"]

    # failures: one JSON error object on stdout, non-zero exit
    assert js("key", "show", "acme/nope", rc=1) == {"error": "NOT_FOUND: no key named acme/nope",
                                                    "code": "NOT_FOUND"}
    assert js("key", "generate", "other/x", group="bin", rc=1)["code"] == "PERMISSION_DENIED"
    assert js("key", "nonsense", rc=2)["code"] == "USAGE"
    assert js("random", "--", "-1", rc=2)["code"] == "USAGE"
    assert js("key", "sign", "acme/j", "--input", tmp_path / "missing", "-o", "-", rc=1)["code"] == "IO_ERROR"
    assert js("ca", "revoke", "zz", rc=2)["code"] == "INVALID_ARGUMENT"
    assert js("key", "public", "acme/j", "-o", tmp_path / "j.sig", rc=2)["code"] == "ALREADY_EXISTS"
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # reordered
    bad = js("audit", "verify", tmp_path / "bad.jsonl", "--public-key", tmp_path / "a.pem", rc=1)
    assert bad["code"] == "VERIFICATION_FAILED" and bad["problems"]


def test_attest_verify_without_trust_anchor_is_not_ok(tpm_daemon, tmp_path):
    tpm_daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/dev", algorithm=pb.EC_P256))
    evidence = tmp_path / "ev.json"
    tpm_daemon.ctl("attest", "key", "acme/dev", "--pcrs", "0,7", "-o", evidence, group="bin")
    r = tpm_daemon.ctl("attest", "verify", evidence, check=False)
    assert r.returncode == 3 and r.stdout.decode() == "OK (signature only: no trust anchor given)\n"
    r = tpm_daemon.ctl("--json", "attest", "verify", evidence, check=False)
    assert r.returncode == 3
    assert json.loads(r.stdout) == {"ok": True, "signature_only": True, "trust_anchor": None}
    # a broken signature is still a failure (exit 1), anchor or not
    doc = json.loads(evidence.read_text())
    doc["nonce"] = "00" * 16
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    r = tpm_daemon.ctl("attest", "verify", tmp_path / "bad.json", check=False)
    assert r.returncode == 1 and b"FAIL" in r.stdout and b"OK" not in r.stdout
    # enrolment needs an EK certificate; this swtpm has none: one line saying so
    r = tpm_daemon.ctl("attest", "enroll", evidence, "--ek-ca", evidence, "-o", tmp_path / "ak.pem", check=False)
    assert r.returncode == 1 and b"no EK certificate" in r.stderr and r.stderr.count(b"\n") == 1


@pytest.mark.parametrize("edit, where", [
    (lambda c: c.update(worker=4), "unknown key 'worker'"),
    (lambda c: c["backend"].update(tcti_typo="x"), "unknown key 'tcti_typo' in backend (type software)"),
    (lambda c: c["listen"].update(tpc={"address": "x"}), "unknown key 'tpc' in listen"),
    (lambda c: c["listen"]["unix"][0].update(owner="x"), "unknown key 'owner' in listen.unix"),
    (lambda c: c["cert_profiles"]["user"].update(max_day=3), "unknown key 'max_day' in cert_profiles.user"),
])
def test_unknown_config_keys_are_errors(tmp_path, edit, where):
    import yaml

    d = Daemon(tmp_path / "kms", {"type": "software"})
    cfg = yaml.safe_load(d.config.read_text())
    edit(cfg)
    d.config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "segway_kms.server.daemon", "-c", str(d.config)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"segway-kmsd: {d.config}: {where}"), line
