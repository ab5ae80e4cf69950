"""The audit log: every mutation recorded, signed by the backend's audit key; tampering is detected."""
from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from segway_kms.api import kms_pb2 as pb
from segway_kms.audit.chain import entry_hash
from segway_kms.audit.verify import verify_log


@pytest.fixture
def exported(tpm_daemon, tmp_path):
    op = tpm_daemon.stub("daemon")
    op.GenerateKey(pb.GenerateKeyRequest(name="acme/a", algorithm=pb.EC_P256))
    op.GenerateKey(pb.GenerateKeyRequest(name="acme/b", algorithm=pb.EC_P256))
    op.RotateKey(pb.KeyRef(name="acme/a"))
    op.DisableKey(pb.KeyRef(name="acme/b"))
    op.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/a"), digest=bytes(32)))  # not a mutation: not logged
    tpm_daemon.stub("root").DestroyKey(pb.KeyRef(name="acme/b"))
    log, pub = tmp_path / "audit.jsonl", tmp_path / "audit.pem"
    tpm_daemon.ctl("audit", "export", "-o", log, "--public-key-output", pub)
    return tpm_daemon, log, pub


def test_mutations_are_logged_and_verify(exported):
    daemon, log, pub = exported
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    ops = [(e["op"], e["principal"], e["target"]) for e in entries]
    assert ops[0] == ("GenerateKey", "segway-kmsd", "_system/ca")  # the CA key, created for InitCa
    assert ops[1] == ("InitCa", "group:root", "ca")
    assert ("GenerateKey", "group:daemon", "acme/a") in ops
    assert ops[-4:] == [("GenerateKey", "group:daemon", "acme/b"), ("RotateKey", "group:daemon", "acme/a"),
                        ("DisableKey", "group:daemon", "acme/b"), ("DestroyKey", "group:root", "acme/b")]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    # the audit key lives in the backend: the exported public key is the one the daemon published
    assert pub.read_bytes() == (daemon.state / "audit-public.pem").read_bytes()
    out = daemon.ctl("audit", "verify", log, "--public-key", pub, "--head", entries[-1]["hash"])
    assert b"audit log OK" in out.stdout
    # paging through the export gives the same chain
    stub, pages, seq = daemon.stub("root"), [], 1
    while seq:
        resp = stub.ExportAudit(pb.AuditExportRequest(from_seq=seq, limit=2))
        assert len(resp.entries) <= 2
        pages += list(resp.entries)
        seq = resp.next_seq
    assert [json.loads(p) for p in pages] == entries


def _lines(log):
    return log.read_text().splitlines()


def _problems(lines, pub, head=None, first_seq=1):
    return verify_log(lines, pub.read_bytes(), expect_head=head, first_seq=first_seq)


def test_edit_is_detected(exported):
    _daemon, log, pub = exported
    lines = _lines(log)
    entry = json.loads(lines[2])
    entry["principal"] = "group:someone-else"
    edited = lines[:2] + [json.dumps(entry)] + lines[3:]
    assert any("edited" in p for p in _problems(edited, pub))
    # recomputing the hash does not help: the signature and the next entry's prev no longer match
    entry["hash"] = entry_hash(entry)
    rehashed = lines[:2] + [json.dumps(entry)] + lines[3:]
    problems = _problems(rehashed, pub)
    assert any("bad signature" in p for p in problems) and any("prev does not match" in p for p in problems)


def test_deletion_is_detected(exported):
    daemon, log, pub = exported
    lines = _lines(log)
    assert any("gap" in p for p in _problems(lines[:2] + lines[3:], pub))
    assert any("removed from the start" in p for p in _problems(lines[1:], pub))
    assert _problems(lines[1:], pub, first_seq=2) == []  # a deliberate partial export still verifies
    head = json.loads(lines[-1])["hash"]
    assert any("expected head" in p for p in _problems(lines[:-1], pub, head=head))
    log.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    r = daemon.ctl("audit", "verify", log, "--public-key", pub, check=False)
    assert r.returncode == 1 and b"FAIL" in r.stdout


def test_reordering_is_detected(exported):
    _daemon, log, pub = exported
    lines = _lines(log)
    swapped = lines[:1] + [lines[2], lines[1]] + lines[3:]
    assert any("reordering" in p for p in _problems(swapped, pub))


def test_foreign_key_is_detected(exported, tmp_path):
    _daemon, log, _pub = exported
    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    problems = _problems(_lines(log), other)
    assert len([p for p in problems if "bad signature" in p]) == len(_lines(log))
