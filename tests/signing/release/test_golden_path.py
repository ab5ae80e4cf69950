"""The documented path end to end, with one naming scheme throughout: the commands of docs/yocto-layer.md
("What a plain kas build needs") as written — token init-dev, the development ceremony writing the
certificates to conf/signing/certs — then ``release`` of every machine's signing plan
(conf/signing/*.yaml, deploy dirs made from fixtures) with that token, ``release verify``, and the
layer's signing functions with the key URIs and certificates segway-signing.inc names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.docs_blocks import runnable_script, shell_blocks
from tests.fit_fixtures import make_unsigned_fit
from tests.helpers import SEGWAY_SIGN
from tests.signing.formats.hab.test_hab import make_flash_bin
from segway_sign.formats.stm32 import header as stm32

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def doc_commands() -> list[str]:
    """The runnable shell blocks of docs/yocto-layer.md (tests/docs_blocks.py), line by line."""
    script = runnable_script(shell_blocks(REPO / "docs" / "yocto-layer.md"))
    return [line for line in script.splitlines() if line.strip()]


def deploy_dir(plan: dict, root: Path) -> Path:
    """What a deferred build of the plan's machine deploys, made from fixtures under the plan's names."""
    deploy = root / f"deploy-{plan['machine']}"
    deploy.mkdir()
    work = root / f"work-{plan['machine']}"
    work.mkdir()
    for step in plan["steps"]:
        for role, name in step.get("inputs", {}).items():
            if name.startswith("step:"):
                continue
            path = deploy / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if step["type"] == "verity":
                path.write_bytes(os.urandom(256 * 4096))
            elif step["type"] == "fit":
                shutil.copy(make_unsigned_fit(work / "fit", hint=step["options"]["key_name_hint"]), path)
            elif step["type"] == "stm32":
                path.write_bytes(stm32.create(os.urandom(40000), entry_point=0x2FFC2500, load_address=0x2FFC2400,
                                              binary_type=0x10))
            elif step["type"] == "fip":
                parts = ["tos-fw", "nt-fw", "hw-config"]
                if step.get("options", {}).get("cot") == "generic":  # BL2 and BL31 are in this FIP too
                    parts += ["tb-fw", "soc-fw", "tos-fw-extra1"]
                for part in parts:
                    (work / f"{part}.bin").write_bytes(os.urandom(5000))
                subprocess.run(["fiptool", "create", *[a for p in parts for a in (f"--{p}", str(work / f"{p}.bin"))],
                                str(path)], check=True, capture_output=True)
            elif step["type"] == "hab":
                flash_bin, _ = make_flash_bin(work)
                shutil.copy(flash_bin, path)
            else:  # copied as built (FWU metadata)
                path.write_bytes(os.urandom(4096))
    return deploy


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """A checkout-like directory where the documented commands ran as written."""
    root = tmp_path_factory.mktemp("golden")
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("certs"))
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "SEGWAY_PIN_FILE",
                                                            "SEGWAY_PKCS11_MODULE", "SEGWAY_DEV_HSM_DIR")}
    env["PATH"] = f"{Path(SEGWAY_SIGN).parent}:{env['PATH']}"
    script = "set -e\n" + "\n".join(doc_commands()) + '\nprintf "%s\\n%s\\n" "$SOFTHSM2_CONF" "$SEGWAY_PIN_FILE" > env.out\n'
    r = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    conf, pin_file = (root / "env.out").read_text().split()
    env.update(SOFTHSM2_CONF=conf, SEGWAY_PIN_FILE=pin_file)
    return root, env


def test_doc_commands_leave_the_certificates_where_plans_and_layer_look(golden):
    root, _ = golden
    assert not any("kas build" in c for c in doc_commands())
    certs = root / "conf" / "signing" / "certs"
    for plan_path in sorted((root / "conf" / "signing").glob("*.yaml")):
        plan = yaml.safe_load(plan_path.read_text())
        for key in plan["keys"].values():
            assert (certs / key["cert"]).is_file(), f"{plan_path.name}: {key['cert']}"
            label = re.search(r"object=([^;]+)", key["uri"]).group(1)
            assert key["cert"] == f"{label}.crt"  # one scheme: <label>.crt for the key object=<label>
        for step in plan["steps"]:
            if "srk_table" in step.get("options", {}):
                assert (certs / step["options"]["srk_table"]).is_file()


@pytest.mark.parametrize("machine", sorted(p.stem for p in (REPO / "conf" / "signing").glob("*.yaml")))
def test_release_and_verify_every_machine_plan(golden, machine, tmp_path):
    root, env = golden
    plan_path = root / "conf" / "signing" / f"{machine}.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    deploy = deploy_dir(plan, tmp_path)
    rel = tmp_path / f"release-{machine}"
    r = subprocess.run([SEGWAY_SIGN, "release", "--plan", str(plan_path), "--deploy-dir", str(deploy), "--out",
                        str(rel), "--certs", "conf/signing/certs"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    v = subprocess.run([SEGWAY_SIGN, "release", "verify", "--certs", "conf/signing/certs", str(rel)], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    assert v.returncode == 0 and f"{rel}: OK" in v.stdout, v.stdout + v.stderr
    if machine == "imx8mm":
        # The next step on the path: the flashing command takes the release as made (the hab step
        # ships the SRK table beside the signed imx-boot).
        f = subprocess.run([SEGWAY_SIGN, "flash", "imx", "--certs", "conf/signing/certs", "--usb", "--dry-run",
                            str(rel)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert f.returncode == 0, f.stdout + f.stderr
        assert "imx-boot" in f.stdout and "segway-dev-hab-srk-table.bin" not in f.stdout, f.stdout


def test_layer_signing_functions_with_the_layer_names(golden, tmp_path, monkeypatch):
    """segway-signing.inc's defaults name keys that exist in the token with the certificates in
    conf/signing/certs; the class signs the FIT and keys U-Boot with them (hsm mode, real segway-sign)."""
    from tests.meta_segway.layer import LAYER, class_functions, evaluate, import_bb
    from segway_sign.hsm import PinSource, module, open_private_key
    from segway_sign.crypto import spki_der
    from segway_sign.release.certs import load_certificate

    root, env = golden
    d = evaluate([LAYER / "conf/distro/include/segway-signing.inc"],
                 {"SEGWAY_REPO_DIR": str(root), "MACHINE": "qemuarm64-secureboot"})
    # Every key the layer names is in the token, and its certificate holds that key.
    for var in ("FIT", "VERITY", "STM32", "FIP_ROT", "HAB_CSF", "HAB_IMG"):
        uri, cert = d.getVar(f"SEGWAY_{var}_KEY_URI"), d.getVar(f"SEGWAY_{var}_CERT")
        monkeypatch.setenv("SOFTHSM2_CONF", env["SOFTHSM2_CONF"])
        module.reset()
        key = open_private_key(uri, pin=PinSource(file=Path(env["SEGWAY_PIN_FILE"])))
        assert key.public_der == spki_der(load_certificate(cert).public_key()), var
        module.reset()
    assert Path(d.getVar("SEGWAY_HAB_SRK_TABLE")).is_file()

    bb = import_bb()
    monkeypatch.setattr(bb, "fatal", lambda *a: (_ for _ in ()).throw(AssertionError(" ".join(map(str, a)))))
    monkeypatch.setattr(bb, "note", lambda *a: None)
    f = class_functions("segway_cert.bbclass", "segway_sign.bbclass")
    origenv = bb.data.init()
    for name in ("SOFTHSM2_CONF", "SEGWAY_PIN_FILE"):
        origenv.setVar(name, env[name])
    d.setVar("BB_ORIGENV", origenv)
    d.setVar("SEGWAY_SIGN_MODE", "hsm")
    d.setVar("PATH", f"{Path(SEGWAY_SIGN).parent}:/usr/bin:/bin")
    d.setVar("WORKDIR", str(tmp_path))
    d.setVar("SEGWAY_SIGN_LOCK", str(tmp_path / "hsm.lock"))
    d.setVar("SEGWAY_CERT_FP_SEGWAY_FIT_CERT", f["segway_cert_fingerprint"](d, "SEGWAY_FIT_CERT"))
    unsigned = make_unsigned_fit(tmp_path / "fit", hint=d.getVar("SEGWAY_FIT_KEY_NAME"))
    signed = tmp_path / "segway-fit.itb"
    # As segway-fit-image's do_compile calls it.
    argv = ["fit", "sign", "--key", d.getVar("SEGWAY_FIT_KEY_URI"), "--in", str(unsigned), "--out", str(signed),
            "--key-name-hint", d.getVar("SEGWAY_FIT_KEY_NAME"), "--algo", d.getVar("SEGWAY_FIT_SIGN_ALGO")]
    f["segway_sign"](d, "fit", argv, [str(unsigned)], str(signed), "SEGWAY_FIT_CERT")
    # U-Boot's control DTB keyed from the certificate accepts the FIT with U-Boot's checks.
    dtb = tmp_path / "u-boot.dtb"
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(dtb), "-"], input=b"/dts-v1/; / { };", check=True)
    keyed = tmp_path / "keyed.dtb"
    f["segway_add_fit_pubkey"](d, str(dtb), str(keyed))
    check = subprocess.run([SEGWAY_SIGN, "fit", "verify", "--dtb", str(keyed), "--in", str(signed)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "segway-dev-fit" in check.stdout + check.stderr


def test_ceremony_doc_block_runs_as_written(tmp_path):
    """docs/ceremony.md's runnable block, in a fresh checkout-like directory."""
    shutil.copytree(REPO / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("certs"))
    block = runnable_script(shell_blocks(REPO / "docs" / "ceremony.md"))
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "SEGWAY_PIN_FILE",
                                                            "SEGWAY_PKCS11_MODULE", "SEGWAY_DEV_HSM_DIR")}
    env["PATH"] = f"{Path(SEGWAY_SIGN).parent}:{env['PATH']}"
    r = subprocess.run(["bash", "-ec", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    count = 1 + len(yaml.safe_load((REPO / "conf" / "pki-dev.yaml").read_text())["keys"])  # the root and the keys
    assert f"{count} keys, 0 in the token, {count} missing" in r.stdout
    assert (tmp_path / "conf" / "signing" / "certs" / "segway-dev-fit.crt").is_file()
    assert (tmp_path / "out" / "pki" / "ceremony.json").is_file()
