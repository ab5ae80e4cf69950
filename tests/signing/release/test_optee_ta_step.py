"""The optee-ta step type: TAs signed inside a release run (byte-identical to upstream's
sign_encrypt.py with the same key) and re-checked by `release verify`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.signing.formats.optee.ta_fixtures import TA_UUID, build_ta_elf, default_key, oracle_sign
from tests.signing.release.release_fixtures import make_deploy, plan_doc, self_signed, write_cert, write_plan
from segway_sign.errors import SegwayError
from segway_sign.formats.optee import ta
from segway_sign.release import steps
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.verify import verify_release

OTHER_UUID = uuid.UUID("5b9e0e40-2636-11e1-ad9e-0002a5d5c51b")  # xtest's os_test TA


@pytest.fixture
def ta_key(tmp_path, file_keys):
    """An RSA 3072 TA key as a PEM (for the oracle), behind a pkcs11: URI for the run, and its certificate."""
    key = rsa.generate_private_key(65537, 3072)
    pem = tmp_path / "ta.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    uri = "pkcs11:token=files;object=optee-ta"
    file_keys.keys[uri] = key
    file_keys.uris["optee-ta"] = uri
    write_cert(file_keys.certs / "optee-ta.pem", self_signed(key, "optee-ta test"))
    return pem


def ta_deploy(tmp_path):
    deploy = make_deploy(tmp_path)
    elf = build_ta_elf(tmp_path / "ta")
    (deploy / elf.name).write_bytes(elf.read_bytes())
    other = build_ta_elf(tmp_path / "other", OTHER_UUID, mult=5)
    oracle_sign(other, default_key(), deploy / f"{OTHER_UUID}.ta", OTHER_UUID, version=4)  # as Debian ships it
    return deploy, elf, other


def ta_plan(tmp_path, uris, options=None) -> Path:
    step = {"id": "optee-tas", "type": "optee-ta", "key": "optee-ta",
            "inputs": {"hello": f"{TA_UUID}.stripped.elf", "os-test": f"{OTHER_UUID}.ta"}}
    if options:
        step["options"] = options
    return write_plan(tmp_path / "plan.yaml", plan_doc(uris, [step]))


def test_optee_ta_step_signs_and_verifies(tmp_path, file_keys, ta_key):
    deploy, elf, other = ta_deploy(tmp_path)
    plan = load_plan(ta_plan(tmp_path, file_keys.uris), set(steps.REGISTRY))
    rel = tmp_path / "rel"
    run_release(plan, deploy, rel, file_keys.open_key, file_keys.certs)
    doc = json.loads((rel / "manifest.json").read_text())
    record = next(s for s in doc["steps"] if s["id"] == "optee-tas")
    assert [(t["file"], t["ta_version"]) for t in record["details"]["tas"]] == \
        [(f"{TA_UUID}.ta", 0), (f"{OTHER_UUID}.ta", 4)]
    # the same bytes as upstream's tool with the same key
    assert (rel / "optee-tas" / f"{TA_UUID}.ta").read_bytes() == oracle_sign(elf, ta_key, tmp_path / "o1.ta")
    assert (rel / "optee-tas" / f"{OTHER_UUID}.ta").read_bytes() == \
        oracle_sign(other, ta_key, tmp_path / "o2.ta", OTHER_UUID, version=4)
    verify_release(rel, load_certs_dir(file_keys.certs))
    # without the TA key's certificate, release verify refuses the step
    certs = [c for c in load_certs_dir(file_keys.certs) if "optee-ta" not in c.subject.rfc4514_string()]
    with pytest.raises(SegwayError, match="no trusted certificate"):
        verify_release(rel, certs)
    # a TA renamed to another UUID is refused by the step's own check
    renamed = "00000000-0000-4000-8000-000000000001.ta"
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / renamed).write_bytes((rel / "optee-tas" / f"{TA_UUID}.ta").read_bytes())
    ctx = steps.VerifyContext("optee-tas", tmp_path / "renamed", {"details": {"tas": [
        {**record["details"]["tas"][0], "file": renamed}]}}, load_certs_dir(file_keys.certs))
    with pytest.raises(SegwayError, match="signed as"):
        steps.get("optee-ta").verify(ctx)


def test_optee_ta_step_options(tmp_path, file_keys, ta_key):
    deploy, _, _ = ta_deploy(tmp_path)
    plan = load_plan(ta_plan(tmp_path, file_keys.uris, {"algo": "pss", "ta_version": 7}), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    signed = ta.parse((tmp_path / "rel" / "optee-tas" / f"{OTHER_UUID}.ta").read_bytes())
    assert signed.algo == ta.ALGO_PSS and signed.ta_version == 7
    verify_release(tmp_path / "rel", load_certs_dir(file_keys.certs))
    for i, (bad, message) in enumerate((({"algo": "sha1"}, "algo"), ({"ta_version": -1}, "ta_version"))):
        plan = load_plan(ta_plan(tmp_path, file_keys.uris, bad), set(steps.REGISTRY))
        with pytest.raises(SegwayError, match=message):
            run_release(plan, deploy, tmp_path / f"bad{i}", file_keys.open_key, file_keys.certs)
        assert not (tmp_path / f"bad{i}").exists()
