"""segway-sign release: a plan over a deploy dir → signed release + manifest, checked by openssl and veritysetup."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.signing.release.release_fixtures import make_deploy, plan_doc, self_signed, write_cert, write_plan
from segway_sign.errors import InputError, OutputExistsError, SegwayError, VerificationError
from segway_sign.release import steps
from segway_sign.release.manifest import sha256_file
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.verify import verify_release


def snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): (sha256_file(p), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in d.rglob("*") if p.is_file()}


def release(tmp_path, file_keys, doc=None, out="rel", **kw):
    plan = load_plan(write_plan(tmp_path / "plan.yaml", doc or plan_doc(file_keys.uris)), set(steps.REGISTRY))
    return run_release(plan, tmp_path / "deploy", tmp_path / out, file_keys.open_key, file_keys.certs, **kw)


def test_release_end_to_end(tmp_path, file_keys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    deploy = make_deploy(tmp_path)
    before = snapshot(deploy)
    res = release(tmp_path, file_keys)
    assert res.status == "signed"
    assert snapshot(deploy) == before  # the deploy dir is only read
    rel = tmp_path / "rel"
    doc = json.loads((rel / "manifest.json").read_text())
    assert doc["created"] == "2026-01-01T00:00:00Z"
    assert [s["id"] for s in doc["steps"]] == ["disk", "rootfs-verity"]
    assert doc["inputs"]["rootfs.ext4"] == sha256_file(deploy / "rootfs.ext4")
    for rel_path, digest in doc["outputs"].items():
        assert sha256_file(rel / rel_path) == digest
    assert set(doc["outputs"]) >= {"disk/disk.wic", "disk/disk.wic.bmap", "rootfs-verity/rootfs.ext4",
                                   "rootfs-verity/rootfs.hashtree", "rootfs-verity/rootfs.roothash.p7s",
                                   "rootfs-verity/verity.env"}
    assert doc["keys"]["verity"]["uri"] == file_keys.uris["verity"]
    assert doc["keys"]["release"]["certificate_sha256"] and "segway-sign" in doc["tools"]
    assert "pin" not in (rel / "manifest.json").read_text().lower()
    # openssl checks the manifest signature with the release certificate as the only trust anchor.
    ca = file_keys.certs / "release.pem"
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                        str(rel / "manifest.json.p7s"), "-content", str(rel / "manifest.json"),
                        "-CAfile", str(ca), "-purpose", "any", "-out", os.devnull],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # veritysetup agrees with the tree in the release.
    v = subprocess.run(["veritysetup", "verify", str(rel / "rootfs-verity" / "rootfs.ext4"),
                        str(rel / "rootfs-verity" / "rootfs.hashtree"),
                        doc["steps"][1]["details"]["root_hash"]], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    ok = verify_release(rel, load_certs_dir(file_keys.certs))
    assert ok.files == len(doc["outputs"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rel.")]


def test_rerun_is_idempotent_and_reproducible(tmp_path, file_keys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    make_deploy(tmp_path)
    release(tmp_path, file_keys)
    first = snapshot(tmp_path / "rel")
    again = release(tmp_path, file_keys)
    assert again.status == "unchanged" and snapshot(tmp_path / "rel") == first
    # A fresh run elsewhere gives the same bytes for everything but the ECDSA manifest signature.
    release(tmp_path, file_keys, out="rel2")
    second = snapshot(tmp_path / "rel2")
    assert {k: v[0] for k, v in first.items() if k != "manifest.json.p7s"} == \
           {k: v[0] for k, v in second.items() if k != "manifest.json.p7s"}
    # Changed input → the old release is not silently kept.
    (tmp_path / "deploy" / "disk.wic").write_bytes(b"other" * 100)
    with pytest.raises(OutputExistsError, match="other plan or other inputs"):
        release(tmp_path, file_keys)
    assert release(tmp_path, file_keys, force=True).status == "signed"
    verify_release(tmp_path / "rel", load_certs_dir(file_keys.certs))


@pytest.mark.parametrize("breakage,error,message", [
    ("missing-input", InputError, "rootfs.ext4 is not in"),
    ("keyless-step", InputError, "step 'rootfs-verity' (type verity) needs a key"),
    ("copy-option", InputError, "step 'disk': unknown option(s) colour for type copy"),
    ("wrong-cert", InputError, "does not match key 'verity'"),
    ("bad-option", InputError, "unknown option(s) colour"),
    ("bad-image", InputError, "not a multiple of the data block size"),
])
def test_failure_at_any_step_leaves_no_output(tmp_path, file_keys, breakage, error, message):
    deploy = make_deploy(tmp_path)
    doc = plan_doc(file_keys.uris)
    if breakage == "missing-input":
        (deploy / "rootfs.ext4").unlink()
    elif breakage == "keyless-step":
        del doc["steps"][1]["key"]
    elif breakage == "copy-option":
        doc["steps"][0]["options"] = {"colour": "red"}
    elif breakage == "wrong-cert":
        write_cert(file_keys.certs / "verity.pem",
                   self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "x"))
    elif breakage == "bad-option":
        doc["steps"][1]["options"]["colour"] = "red"
    elif breakage == "bad-image":
        (deploy / "rootfs.ext4").write_bytes(b"\1" * 5000)
    with pytest.raises(error) as err:
        release(tmp_path, file_keys, doc)
    assert message in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certs", "deploy", "plan.yaml"]


@pytest.mark.parametrize("tamper,message", [
    (lambda r: (r / "disk" / "disk.wic").write_bytes(b"x"), "disk/disk.wic: sha256 differs"),
    (lambda r: (r / "disk" / "extra.bin").write_bytes(b"x"), "not in the manifest: disk/extra.bin"),
    (lambda r: (r / "disk" / "disk.wic.bmap").unlink(), "listed in the manifest but missing"),
    (lambda r: (r / "manifest.json").write_text((r / "manifest.json").read_text().replace("testmachine", "evil")),
     "does not verify"),
])
def test_release_verify_catches_tampering(tmp_path, file_keys, tamper, message):
    make_deploy(tmp_path)
    release(tmp_path, file_keys)
    tamper(tmp_path / "rel")
    with pytest.raises(SegwayError) as err:
        verify_release(tmp_path / "rel", load_certs_dir(file_keys.certs))
    assert message in str(err.value)


def test_release_verify_rechecks_verity_with_consistent_hashes(tmp_path, file_keys):
    """Even if someone rewrites the manifest hashes, the verity step's own check runs (here: wrong certs)."""
    make_deploy(tmp_path)
    release(tmp_path, file_keys)
    other = tmp_path / "other-certs"
    other.mkdir()
    write_cert(other / "x.pem", self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "x"))
    with pytest.raises(VerificationError, match="trusted"):
        verify_release(tmp_path / "rel", load_certs_dir(other))


def test_manifest_uris_never_carry_a_pin_source():
    from segway_sign.release.manifest import public_uri

    assert public_uri("pkcs11:token=ci;object=v?pin-source=file:/run/pin&module-path=/usr/lib/p.so") == \
        "pkcs11:token=ci;object=v?module-path=/usr/lib/p.so"
