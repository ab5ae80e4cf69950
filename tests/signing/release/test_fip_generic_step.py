"""The fip step with TF-A's generic TBBR chain (``cot: generic``): every key from the plan, the FIP
listed by fiptool, re-checked by `release verify` (root of trust, every carried key trusted, the
recorded ROTPK hash), and plans that name the wrong keys refused before any work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.signing.release.release_fixtures import make_deploy, plan_doc, self_signed, write_cert, write_plan
from segway_sign.crypto import spki_der
from segway_sign.errors import InputError, SegwayError
from segway_sign.release import steps
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.verify import verify_release

ROLE_KEYS = {"trusted_world_key": "fip-tw", "non_trusted_world_key": "fip-ntw", "soc_fw_key": "fip-soc",
             "tos_fw_key": "fip-tos", "nt_fw_key": "fip-nt"}


def add_keys(file_keys) -> None:
    for name in ROLE_KEYS.values():
        key = ec.generate_private_key(ec.SECP256R1())
        uri = f"pkcs11:token=files;object={name}"
        file_keys.keys[uri], file_keys.uris[name] = key, uri
        write_cert(file_keys.certs / f"{name}.pem", self_signed(key, f"{name} test"))


def generic_deploy(tmp_path):
    deploy = make_deploy(tmp_path)
    args = ["fiptool", "create"]
    for name in ("tb-fw", "soc-fw", "tos-fw", "tos-fw-extra1", "nt-fw"):
        (tmp_path / f"{name}.bin").write_bytes(os.urandom(3000))
        args += [f"--{name}", str(tmp_path / f"{name}.bin")]
    subprocess.run([*args, str(deploy / "fip.bin")], check=True, capture_output=True)
    return deploy


def generic_plan(uris, **options) -> dict:
    opts = {"cot": "generic", **ROLE_KEYS, "tfw_nvctr": 1, "ntfw_nvctr": 1, **options}
    return plan_doc(uris, [{"id": "fip", "type": "fip", "key": "fip-rot", "inputs": {"fip": "fip.bin"},
                            "options": {k: v for k, v in opts.items() if v is not None}}])


@pytest.fixture
def released(tmp_path, file_keys):
    add_keys(file_keys)
    deploy = generic_deploy(tmp_path)
    plan = load_plan(write_plan(tmp_path / "plan.yaml", generic_plan(file_keys.uris)), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    return tmp_path / "rel", file_keys


def test_generic_fip_step_signs_and_verifies(released):
    rel, file_keys = released
    doc = json.loads((rel / "manifest.json").read_text())
    record = next(s for s in doc["steps"] if s["id"] == "fip")
    rot = file_keys.keys[file_keys.uris["fip-rot"]]
    assert record["details"]["cot"] == "generic"
    assert record["details"]["rotpk_hash"] == hashlib.sha256(spki_der(rot.public_key())).hexdigest()
    assert "soc_fw_content_cert" in record["details"]["certificates"]
    info = subprocess.run(["fiptool", "info", str(rel / "fip" / "fip.bin")], capture_output=True, text=True)
    assert info.returncode == 0 and all(f"--{c}" in info.stdout for c in (
        "tb-fw-cert", "trusted-key-cert", "soc-fw-key-cert", "soc-fw-cert", "tos-fw-cert", "nt-fw-cert")), info.stdout
    verify_release(rel, load_certs_dir(file_keys.certs))


def test_verify_refuses_an_untrusted_chain_key(released):
    rel, file_keys = released
    certs = [c for c in load_certs_dir(file_keys.certs) if "fip-tos" not in c.subject.rfc4514_string()]
    with pytest.raises(SegwayError, match="tos-fw-content key is the key of no trusted certificate"):
        verify_release(rel, certs)
    certs = [c for c in load_certs_dir(file_keys.certs) if "fip-rot" not in c.subject.rfc4514_string()]
    with pytest.raises(SegwayError, match="root of trust"):
        verify_release(rel, certs)


@pytest.mark.parametrize("options, match", [
    ({"soc_fw_key": None}, "needs option"),
    ({"cot": "stm32mp1"}, "takes no option"),
    ({"cot": "tbbr"}, "option cot must be one of"),
])
def test_plan_refused_before_any_work(options, match, tmp_path, file_keys):
    add_keys(file_keys)
    deploy = generic_deploy(tmp_path)
    plan = load_plan(write_plan(tmp_path / "plan.yaml", generic_plan(file_keys.uris, **options)), set(steps.REGISTRY))
    with pytest.raises(InputError, match=match):
        run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    assert file_keys.opened == []
