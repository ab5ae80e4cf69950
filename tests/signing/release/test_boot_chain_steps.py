"""The stm32 and fip step types: TF-A BL2 header and FIP certificates signed inside a release run,
listed by Debian's fiptool and re-checked by `release verify`."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.signing.release.release_fixtures import make_deploy, plan_doc, write_plan
from segway_sign.errors import SegwayError
from segway_sign.formats.stm32 import header as stm32
from segway_sign.release import steps
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.verify import verify_release


def boot_chain_deploy(tmp_path):
    deploy = make_deploy(tmp_path)
    (deploy / "tf-a.stm32").write_bytes(stm32.create(os.urandom(40000), entry_point=0x2FFC2500,
                                                     load_address=0x2FFC2400, binary_type=0x10))
    for name in ("tos-fw", "nt-fw", "hw-config"):
        (tmp_path / f"{name}.bin").write_bytes(os.urandom(5000))
    subprocess.run(["fiptool", "create", "--tos-fw", str(tmp_path / "tos-fw.bin"), "--nt-fw",
                    str(tmp_path / "nt-fw.bin"), "--hw-config", str(tmp_path / "hw-config.bin"),
                    str(deploy / "fip.bin")], check=True, capture_output=True)
    return deploy


def chain_plan(uris, fip_key: str = "stm32-rot") -> dict:
    """STM32MP1's chain: the FIP's root-of-trust key is BL2's key (one PKH in OTP)."""
    return plan_doc(uris, [
        {"id": "fip", "type": "fip", "key": fip_key, "inputs": {"fip": "fip.bin"}, "options": {"tfw_nvctr": 2}},
        {"id": "tfa-bl2", "type": "stm32", "key": "stm32-rot", "after": ["fip"], "inputs": {"image": "tf-a.stm32"}},
    ])


def test_stm32_and_fip_steps_sign_and_verify(tmp_path, file_keys):
    deploy = boot_chain_deploy(tmp_path)
    plan = load_plan(write_plan(tmp_path / "plan.yaml", chain_plan(file_keys.uris)), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    rel = tmp_path / "rel"
    doc = json.loads((rel / "manifest.json").read_text())
    assert [s["id"] for s in doc["steps"]] == ["disk", "rootfs-verity", "fip", "tfa-bl2"]
    info = subprocess.run(["fiptool", "info", str(rel / "fip" / "fip.bin")], capture_output=True, text=True)
    assert info.returncode == 0 and all(f"--{c}" in info.stdout for c in ("trusted-key-cert", "nt-fw-cert", "tos-fw-cert")), info.stdout
    checked = stm32.verify((rel / "tfa-bl2" / "tf-a.stm32").read_bytes())
    assert checked.pkh.hex() == doc["steps"][3]["details"]["pkh"]
    verify_release(rel, load_certs_dir(file_keys.certs))


def test_boot_chain_with_foreign_keys_fails_verify(tmp_path, file_keys):
    deploy = boot_chain_deploy(tmp_path)
    plan = load_plan(write_plan(tmp_path / "plan.yaml", chain_plan(file_keys.uris)), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    certs = [c for c in load_certs_dir(file_keys.certs) if "stm32-rot" not in c.subject.rfc4514_string()]
    with pytest.raises(SegwayError, match="step 'fip'.*root of trust"):
        verify_release(tmp_path / "rel", certs)
    record = next(s for s in json.loads((tmp_path / "rel" / "manifest.json").read_text())["steps"]
                  if s["id"] == "tfa-bl2")
    ctx = steps.VerifyContext("tfa-bl2", tmp_path / "rel" / "tfa-bl2", record, certs)
    with pytest.raises(SegwayError, match="none of the trusted certificates"):
        steps.get("stm32").verify(ctx)


def test_release_with_two_root_of_trust_keys_is_refused(tmp_path, file_keys):
    """A FIP signed with another key than BL2's passes each step's own check (both keys are trusted)
    but would not boot on a board fused with BL2's PKH: release verify refuses it."""
    deploy = boot_chain_deploy(tmp_path)
    plan = load_plan(write_plan(tmp_path / "plan.yaml", chain_plan(file_keys.uris, fip_key="fip-rot")),
                     set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    with pytest.raises(SegwayError, match="fip.bin is not signed with the root-of-trust key of tfa-bl2/tf-a.stm32"):
        verify_release(tmp_path / "rel", load_certs_dir(file_keys.certs))
