"""The fit step: the verity env goes into the FIT (initramfs or configuration property) before the
lead FIT signer signs it, so the FIT signature covers the root hash."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.signing.release.release_fixtures import make_deploy, plan_doc, write_plan
from segway_dev import fitbuild
from segway_sign.errors import SegwayError
from segway_sign.formats.verity import sign as verity_sign
from segway_sign.release import fitprep, steps
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.verify import verify_release


def fit_plan(uris, where: str) -> dict:
    doc = plan_doc({k: uris[k] for k in ("verity", "release", "fit")})
    doc["steps"].append({
        "id": "kernel-fit", "type": "fit", "key": "fit",
        "inputs": {"fit": "fitImage", "verity_env": "step:rootfs-verity/verity.env"},
        "options": {"verity_env_in": where, "key_name_hint": "dev"},
    })
    return doc


@pytest.fixture
def deploy(tmp_path):
    d = make_deploy(tmp_path)
    fitbuild.build_tiny_fit(d / "fitImage", arch="arm64")
    (d / "fitImage.its").unlink()
    return d


@pytest.mark.parametrize("where", ["initramfs", "property"])
def test_fit_step_carries_the_verity_env_under_the_signature(tmp_path, file_keys, deploy, where):
    plan = load_plan(write_plan(tmp_path / "plan.yaml", fit_plan(file_keys.uris, where)), set(steps.REGISTRY))
    assert [s.id for s in plan.steps] == ["disk", "rootfs-verity", "kernel-fit"]
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    rel = tmp_path / "rel"
    doc = json.loads((rel / "manifest.json").read_text())
    root = doc["steps"][1]["details"]["root_hash"]
    assert doc["steps"][2]["details"]["verity_root_hash"] == root
    signed = (rel / "kernel-fit" / "fitImage").read_bytes()
    if where == "initramfs":
        env = verity_sign.parse_env(fitprep.read_initramfs_env(signed))
    else:
        (env_text,) = fitprep.read_property_env(signed).values()
        env = verity_sign.parse_env(env_text)
    assert env["VERITY_ROOT_HASH"] == root
    verify_release(rel, load_certs_dir(file_keys.certs))
    # mkimage (an independent FIT parser) lists the signed image and its signature.
    listing = subprocess.run(["mkimage", "-l", str(rel / "kernel-fit" / "fitImage")],
                             capture_output=True, text=True)
    assert listing.returncode == 0 and "Sign value" in listing.stdout, listing.stderr


def test_appended_initramfs_archive_is_a_valid_cpio(tmp_path, file_keys, deploy):
    plan = load_plan(write_plan(tmp_path / "plan.yaml", fit_plan(file_keys.uris, "initramfs")), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    import libfdt
    original = b"segway tiny ramdisk\n" * 16
    fdt = libfdt.Fdt((tmp_path / "rel" / "kernel-fit" / "fitImage").read_bytes())
    data = bytes(fdt.getprop(fdt.path_offset("/images/ramdisk-1"), "data"))
    assert data.startswith(original)
    tail = data[len(original) + (-len(original) % 4):]
    r = subprocess.run(["cpio", "-itv"], input=tail, capture_output=True)
    assert r.returncode == 0, r.stderr
    for name in ("verity.env", "roothash", "roothash.p7s"):
        assert f"usr/share/segway/verity/{name}".encode() in r.stdout
    r = subprocess.run(["cpio", "-i", "--to-stdout", "usr/share/segway/verity/verity.env"], input=tail,
                       capture_output=True)
    root = verity_sign.parse_env(r.stdout.decode())["VERITY_ROOT_HASH"]
    r = subprocess.run(["cpio", "-i", "--to-stdout", "usr/share/segway/verity/roothash"], input=tail,
                       capture_output=True)
    assert r.stdout.decode() == root == (tmp_path / "rel" / "rootfs-verity" / "rootfs.roothash").read_text()


def test_tampered_fit_or_foreign_key_fails_release_verify(tmp_path, file_keys, deploy):
    plan = load_plan(write_plan(tmp_path / "plan.yaml", fit_plan(file_keys.uris, "initramfs")), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    certs = load_certs_dir(file_keys.certs)
    fit_certs = [c for c in certs if "fit" in c.subject.rfc4514_string()]
    others = [c for c in certs if c not in fit_certs]
    with pytest.raises(SegwayError, match="no trusted certificate verifies"):
        verify_release(tmp_path / "rel", others)


def test_swapped_verity_env_with_rehashed_ramdisk_fails_the_fit_signature(tmp_path, file_keys, deploy):
    """An attacker who appends another env and fixes the ramdisk hash still breaks the config signature."""
    plan = load_plan(write_plan(tmp_path / "plan.yaml", fit_plan(file_keys.uris, "initramfs")), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    rel = tmp_path / "rel"
    fit_path = rel / "kernel-fit" / "fitImage"
    evil = fitprep.add_env_to_initramfs(fit_path.read_bytes(), "VERITY_ROOT_HASH=" + "0" * 64 + "\n")
    fit_path.write_bytes(evil)
    record = json.loads((rel / "manifest.json").read_text())["steps"][2]
    ctx = steps.VerifyContext("kernel-fit", rel / "kernel-fit", record, load_certs_dir(file_keys.certs))
    with pytest.raises(SegwayError, match="no trusted certificate verifies"):
        steps.get("fit").verify(ctx)
