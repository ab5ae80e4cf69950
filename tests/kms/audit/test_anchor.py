"""The audit log's TPM anchor: truncation and state rollback are caught by the TPM's NV_Certify, which the
hash chain alone cannot show; refused requests are audited within a per-principal budget."""
from __future__ import annotations

import json
import shutil
import signal

import grpc
import pytest

from segway_kms.api import kms_pb2 as pb
from segway_kms.attestation.enroll import ak_pem
from segway_kms.audit.anchor import AuditAnchor, anchor_values
from segway_kms.audit.chain import AuditChain
from segway_kms.audit.denials import DenialAudit
from segway_kms.audit.verify import verify_anchor
from segway_kms.backends.tpm import TpmBackend
from segway_kms.errors import FailedPrecondition
from segway_kms.keyring import Keyring
from segway_kms.store import Store

from ..conftest import Daemon, Swtpm, tpm_backend


def _pinned_ak(daemon, tmp_path) -> bytes:
    """The AK as `attest enroll` would pin it (the enrolment itself is covered by the attestation tests)."""
    daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/ak-probe", algorithm=pb.EC_P256))
    evidence = tmp_path / "probe.json"
    daemon.ctl("attest", "key", "acme/ak-probe", "-o", evidence, group="bin")
    return ak_pem({"ak_public_area": bytes.fromhex(json.loads(evidence.read_text())["ak_public_area"])})


def _export(daemon, tmp_path, name):
    log, pub, anchor = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.pem", tmp_path / f"{name}-anchor.json"
    daemon.ctl("audit", "export", "-o", log, "--public-key-output", pub, "--anchor-output", anchor)
    return log, pub, anchor


def _verify(daemon, log, pub, anchor, ak, check=True):
    return daemon.ctl("audit", "verify", log, "--public-key", pub, "--anchor", anchor, "--ak", ak, check=check)


def test_anchor_certifies_the_log_and_catches_truncation(tpm_daemon, tmp_path):
    ak = tmp_path / "ak.pem"
    ak.write_bytes(_pinned_ak(tpm_daemon, tmp_path))
    op = tpm_daemon.stub("daemon")
    for i in range(3):
        op.GenerateKey(pb.GenerateKeyRequest(name=f"acme/k{i}", algorithm=pb.EC_P256))
    log, pub, anchor = _export(tpm_daemon, tmp_path, "full")
    assert b"anchored in the TPM" in _verify(tpm_daemon, log, pub, anchor, ak).stdout

    # Cut the last entry: the chain alone cannot tell, the anchor can.
    lines = log.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-1]) + "\n")
    assert tpm_daemon.ctl("audit", "verify", cut, "--public-key", pub).returncode == 0
    r = _verify(tpm_daemon, cut, pub, anchor, ak, check=False)
    assert r.returncode == 1 and b"does not match the log" in r.stdout

    # The anchor file is bound to its nonce and to the pinned AK.
    doc = json.loads(anchor.read_text())
    doc["nonce"] = "00" * 16
    replayed = tmp_path / "replayed.json"
    replayed.write_text(json.dumps(doc))
    assert b"nonce does not match" in _verify(tpm_daemon, log, pub, replayed, ak, check=False).stdout
    other = tmp_path / "other-ak.pem"
    other.write_bytes(pub.read_bytes())  # any other key: here the audit key
    assert b"not the pinned attestation key" in _verify(tpm_daemon, log, pub, anchor, other, check=False).stdout
    r = tpm_daemon.ctl("audit", "verify", log, "--public-key", pub, "--anchor", anchor, check=False)
    assert r.returncode == 2 and b"go together" in r.stderr


def test_rolled_back_state_is_refused_in_release_and_visible_in_development(tmp_path):
    tpm = Swtpm(tmp_path / "swtpm")
    daemon = Daemon(tmp_path / "kms", tpm_backend(tpm), extra={"cert_profiles": {}})
    try:
        daemon.start()
        op = daemon.stub("daemon")
        op.GenerateKey(pb.GenerateKeyRequest(name="acme/early", algorithm=pb.EC_P256))
        daemon.kill(signal.SIGTERM)
        snapshot = tmp_path / "snapshot"
        shutil.copytree(daemon.state, snapshot)  # an attacker keeps a copy of the state directory ...
        daemon.start()
        daemon.stub("daemon").GenerateKey(pb.GenerateKeyRequest(name="acme/late", algorithm=pb.EC_P256))
        daemon.stub("root").DestroyKey(pb.KeyRef(name="acme/early"))
        daemon.kill(signal.SIGTERM)
        shutil.rmtree(daemon.state)
        shutil.copytree(snapshot, daemon.state)  # ... and puts it back, resurrecting the destroyed key

        release = Daemon(tmp_path / "kms-release", tpm_backend(tpm), profile="release",
                         extra={"cert_profiles": {}, "state_dir": str(daemon.state)})
        release.start(expect_ready=False)
        assert release.proc.wait(timeout=60) == 2
        assert "does not match its TPM anchor" in release.log.read_text()
        assert "Traceback" not in release.log.read_text()

        daemon.start()  # development: serves, says so, and verifiers see the rollback
        assert "does not match its TPM anchor" in daemon.log.read_text()
        ak = tmp_path / "ak.pem"
        ak.write_bytes(_pinned_ak(daemon, tmp_path))
        log, pub, anchor = _export(daemon, tmp_path, "rolled-back")
        assert daemon.ctl("audit", "verify", log, "--public-key", pub).returncode == 0  # the chain alone: fine
        r = _verify(daemon, log, pub, anchor, ak, check=False)
        assert r.returncode == 1 and b"does not match the log" in r.stdout
    finally:
        daemon.kill(signal.SIGTERM)
        tpm.stop()


def test_reconcile_catches_up_after_a_crash_between_commit_and_extend(swtpm, tmp_path):
    backend = TpmBackend({"tcti": swtpm.tcti})
    store = Store(tmp_path / "kms.db")
    try:
        keyring = Keyring(backend, store)
        audit_key = keyring.generate_system("audit", "EC_P256", persistent=True)
        version = audit_key.version()
        anchor = AuditAnchor(backend, store, backend.anchor_index)
        anchor.reconcile()
        chain = AuditChain(lambda d: keyring.sign_checked(audit_key, version, d, "ecdsa"), store=store, anchor=anchor)
        for i in range(3):
            with store.transaction() as db:
                chain.append(db, "p", "Op", f"t{i}", {})
        unanchored = AuditChain(lambda d: keyring.sign_checked(audit_key, version, d, "ecdsa"))
        with store.transaction() as db:  # committed, then "crashed" before the extend
            unanchored.append(db, "p", "Op", "t3", {})
        hashes = [bytes.fromhex(r[0]) for r in store.query("SELECT hash FROM audit ORDER BY seq")]
        assert backend.anchor_read(backend.anchor_index) == anchor_values(hashes[:3])[-1]
        AuditAnchor(backend, store, backend.anchor_index).reconcile()  # what the next start does
        assert backend.anchor_read(backend.anchor_index) == anchor_values(hashes)[-1]
        # a log that lost an entry matches no prefix
        store.query("DELETE FROM audit WHERE seq = 4")
        with pytest.raises(FailedPrecondition, match="rolled back"):
            AuditAnchor(backend, store, backend.anchor_index).reconcile()
        # and the host-side check agrees with the TPM: certify, then verify against the full log
        nonce = b"n" * 16
        certified = backend.anchor_certify(backend.anchor_index, nonce)
        lines = [r[0] for r in store.query("SELECT entry FROM audit ORDER BY seq")]
        evidence_ak = ak_pem({"ak_public_area": certified["ak_public_area"]})
        problems = verify_anchor(lines, certified, nonce, evidence_ak)
        assert problems == ["anchor: the TPM's value does not match the log (entries removed, added or changed)"]
    finally:
        store.close()
        backend.close()


@pytest.mark.parametrize("backend_daemon", ["pkcs11"], indirect=True)
def test_pkcs11_backend_has_no_anchor(backend_daemon):
    with pytest.raises(grpc.RpcError) as err:
        backend_daemon.stub().ExportAudit(pb.AuditExportRequest(anchor_nonce=b"x" * 16))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no TPM anchor" in err.value.details()


def test_refusals_are_audited_within_a_budget(tpm_daemon, tmp_path):
    intruder = tpm_daemon.stub("sys")  # admin of "other" only
    for _ in range(12):
        with pytest.raises(grpc.RpcError) as err:
            intruder.GenerateKey(pb.GenerateKeyRequest(name="acme/stolen", algorithm=pb.EC_P256))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError):
        tpm_daemon.stub("adm").GetKey(pb.KeyRef(name="acme/x"))  # a socket group with no principal entry
    log, pub, anchor = _export(tpm_daemon, tmp_path, "denials")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    denied = [(e["principal"], e["target"]) for e in entries if e["op"] == "Denied"]
    assert denied.count(("group:sys", "GenerateKey")) == 10  # the per-minute budget
    assert ("group:adm", "GetKey") in denied
    assert tpm_daemon.ctl("audit", "verify", log, "--public-key", pub).returncode == 0


def test_denial_budget_counts_what_it_suppressed():
    recorded = []

    class Chain:
        def append(self, db, principal, op, target, params):
            recorded.append((principal, params))

    class FakeStore:  # the chain and the store are covered above; this checks the budget arithmetic only
        import contextlib

        @contextlib.contextmanager
        def transaction(self):
            yield None

    now = [0.0]
    audit = DenialAudit(Chain(), FakeStore(), budget=2, window=60, clock=lambda: now[0])
    for _ in range(5):
        audit.record("p", "Sign", "no")
    now[0] = 61.0
    audit.record("p", "Sign", "no")
    assert [p.get("suppressed_before", 0) for _, p in recorded] == [0, 0, 3]
