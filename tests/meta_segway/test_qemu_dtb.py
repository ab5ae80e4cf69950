"""The QEMU secure-boot machines enforce FIT signatures with a key built into U-Boot: segway-qemu-dtb
dumps QEMU's tree for the machine's runqemu options, adds the nodes TF-A and OP-TEE add at run time
(the kernel's tree, signed into the FIT) and the FIT key from the pinned certificate (U-Boot's control
tree, appended to u-boot-nodtb.bin with CONFIG_OF_SEPARATE); runqemu passes no -dtb.

The recipe's own do_compile, key task and do_deploy run here with Debian's QEMU and the real
segway-sign; Debian's U-Boot then boots with the machine's options and the deployed control tree and
must accept a FIT signed by mkimage with the certificate's key and refuse an unsigned one (which it
accepts with QEMU's plain tree)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import libfdt
import pytest
import yaml

from tests.fit_fixtures import pem_key_pair
from segway_dev import fitbuild, qemu
from segway_sign.formats.fit import tree as fit_tree

from .layer import LAYER, class_functions, evaluate, import_bb, python_task, segway_sign_bindir

RECIPE = LAYER / "recipes-bsp/segway-qemu-dtb/segway-qemu-dtb_1.0.bb"
QEMU_INC = LAYER / "conf/distro/include/segway-qemu.inc"
UBOOT_APPEND = LAYER / "recipes-bsp/u-boot/u-boot_%.bbappend"
PINNED = yaml.safe_load((Path(__file__).parent / "data/qemu-machines.yaml").read_text())
CASES = [(series, machine) for series, machines in PINNED.items() for machine in machines]
QB_VARS = ("QB_SYSTEM_NAME", "QB_MACHINE", "QB_CPU", "QB_SMP", "QB_MEM")
KEY_NAME = "dev"


def machine_datastore(machine: str, series: str = "scarthgap", **values):
    preset = {"MACHINE": machine, "OVERRIDES": machine, "QB_OPT_APPEND": "-no-acpi", "SEGWAY_LAYERDIR": str(LAYER),
              "UNPACKDIR": str(RECIPE.parent / "files")}
    preset.update({k: v for k, v in PINNED.get(series, {}).get(machine, {}).items() if k in QB_VARS})
    preset.update(values)
    return evaluate([QEMU_INC, RECIPE], preset, shell_functions=True)


@pytest.mark.parametrize("series,machine", CASES)
def test_uboot_gets_the_keyed_tree_built_in(series, machine):
    d = machine_datastore(machine, series)
    assert d.getVar("SEGWAY_QEMU_KEYED_DTB") == "1"
    dtb = "segway-qemu-virt-%s.dtb" % machine
    assert d.getVar("SEGWAY_QEMU_DTB") == dtb
    # runqemu passes no tree: the key is inside U-Boot (BL33 on qemuarm64-secureboot).
    assert d.getVar("QB_OPT_APPEND") == "-no-acpi"
    assert "segway-qemu-dtb:do_deploy" in d.getVar("EXTRA_IMAGEDEPENDS").split()
    uboot = evaluate([QEMU_INC, UBOOT_APPEND], {"MACHINE": machine, "OVERRIDES": "qemuall:segway:" + machine,
                                                "DEPLOY_DIR_IMAGE": "/deploy", "SRC_URI": ""})
    assert uboot.getVar("SEGWAY_UBOOT_CONTROL_DTB") == "/deploy/" + dtb
    assert "file://segway-qemu-chain.cfg" in uboot.getVar("SRC_URI").split()
    assert "segway-qemu-dtb:do_deploy" in uboot.getVarFlag("do_segway_uboot_pubkey", "depends")


@pytest.mark.parametrize("machine", ["qemuarm64", "imx8mm-lpddr4-evk", "stm32mp15-disco"])
def test_other_machines_are_left_alone(machine):
    d = machine_datastore(machine)
    assert d.getVar("SEGWAY_QEMU_KEYED_DTB") == "0"
    assert d.getVar("QB_OPT_APPEND") == "-no-acpi"
    assert "segway-qemu-dtb" not in (d.getVar("EXTRA_IMAGEDEPENDS") or "")
    bb = import_bb()
    with pytest.raises(bb.parse.SkipRecipe):
        python_task(RECIPE, "__anonymous")(d)


def test_dump_uses_the_runqemu_options():
    d = machine_datastore("qemuarm64-secureboot", WORKDIR="/w")
    args = d.getVar("SEGWAY_QEMU_DUMPDTB_ARGS").split()
    # GICv3 on qemuarm64-secureboot, as TF-A and OP-TEE are built (test_chain_config.py).
    assert args[:2] == ["-machine", "virt,secure=on,gic-version=3,dumpdtb=/w/build/qemu-virt.dtb"]
    for name in ("QB_CPU", "QB_SMP", "QB_MEM"):
        assert " ".join(args).count(d.getVar(name)) == 1, name
    assert args.count("-serial") == 2 and "-bios" in args  # as runqemu starts the machine
    flags = d.getVarFlag("do_segway_qemu_dtb_pubkey", "vardeps", expand=False)
    assert "segway_cert_vardeps('SEGWAY_FIT_CERT')" in flags


def run_shell_task(d, name: str, cwd: Path) -> None:
    body = d.getVar(name)
    proc = subprocess.run(["bash", "-euc", body], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": d.getVar("PATH")})
    assert proc.returncode == 0, "%s failed: %s" % (name, proc.stderr)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory) -> Path:
    """PEM RSA key + self-signed certificate: mkimage signs with the key, the recipe reads the cert."""
    keydir = tmp_path_factory.mktemp("keys")
    pem_key_pair(keydir, KEY_NAME)
    return keydir


def build_recipe(tmp_path: Path, series: str, machine: str, keydir: Path):
    """Run segway-qemu-dtb's do_compile, key task and do_deploy for machine; return the datastore."""
    namespace = class_functions("segway_cert.bbclass", "segway_sign.bbclass")
    d = machine_datastore(machine, series, WORKDIR=str(tmp_path / "work"), DEPLOYDIR=str(tmp_path / "deploy"),
                          PATH="%s:/usr/bin:/bin" % segway_sign_bindir(),
                          SEGWAY_FIT_CERT=str(keydir / f"{KEY_NAME}.crt"), SEGWAY_FIT_KEY_NAME=KEY_NAME)
    d.setVar("SEGWAY_CERT_FP_SEGWAY_FIT_CERT", namespace["segway_cert_fingerprint"](d, "SEGWAY_FIT_CERT"))
    b = Path(d.getVar("B"))
    b.mkdir(parents=True)
    Path(d.getVar("DEPLOYDIR")).mkdir()
    run_shell_task(d, "do_compile", b)
    python_task(RECIPE, "do_segway_qemu_dtb_pubkey", namespace)(d)
    run_shell_task(d, "do_deploy", b)
    return d


def machine_args(d) -> list[str]:
    """runqemu's machine options, on one CPU: with Debian's U-Boot as the firmware every CPU would
    run U-Boot at once (on the machine, TF-A holds the secondary CPUs). The tree still lists the
    machine's CPUs."""
    args = " ".join(d.getVar(name) for name in ("QB_MACHINE", "QB_CPU", "QB_SMP", "QB_MEM")).split()
    args[args.index("-smp") + 1] = "1"
    return args


@pytest.mark.qemu
@pytest.mark.parametrize("series,machine", CASES)
def test_uboot_enforces_the_key_in_the_deployed_tree(tmp_path, keydir, series, machine):
    d = build_recipe(tmp_path, series, machine, keydir)
    arch = PINNED[series][machine]["arch"]
    deployed = Path(d.getVar("DEPLOYDIR")) / d.getVar("SEGWAY_QEMU_DTB")
    plain = Path(d.getVar("B")) / "qemu-virt.dtb"
    fdt = libfdt.Fdt(deployed.read_bytes())
    assert fdt.getprop(0, "compatible").as_str() == "linux,dummy-virt"
    runtime = libfdt.Fdt((Path(d.getVar("DEPLOYDIR")) / d.getVar("SEGWAY_QEMU_RUNTIME_DTB")).read_bytes())
    assert runtime.path_offset("/signature", [libfdt.NOTFOUND]) < 0  # the kernel's tree has no key
    chosen = fdt.path_offset("/chosen")
    assert fdt.getprop(chosen, "rng-seed", [libfdt.NOTFOUND]) == -libfdt.NOTFOUND  # no frozen seed
    if d.getVar("SEGWAY_QEMU_RUNTIME_DTSI"):
        assert fdt.path_offset("/firmware/optee") >= 0 and fdt.path_offset("/psci") >= 0
    assert fdt.getprop(fdt.path_offset("/signature/key-%s" % KEY_NAME), "required").as_str() == "conf"
    smp = int(re.search(r"-smp (\d+)", d.getVar("QB_SMP")).group(1))
    assert sum(1 for name in fit_tree.subnodes(fdt, "/cpus") if name.startswith("cpu@")) == smp

    unsigned = fitbuild.build_tiny_fit(tmp_path / "unsigned.itb", arch=arch, key_name_hint=KEY_NAME,
                                       source_date_epoch=1700000000)
    signed = tmp_path / "signed.itb"
    shutil.copyfile(unsigned, signed)
    fitbuild.mkimage_sign(signed, keydir, source_date_epoch=1700000000)
    margs = machine_args(d)

    ok = qemu.check_fit(arch, deployed, signed, machine_args=margs, log_path=tmp_path / "signed.log")
    assert ok.accepted and ok.verified and ok.statuses == [0], ok.summary()
    refused = qemu.check_fit(arch, deployed, unsigned, machine_args=margs, log_path=tmp_path / "unsigned.log")
    assert refused.refused and refused.statuses[-1] not in (None, 0), refused.summary()
    # Control: QEMU's own tree has no key, and the same U-Boot takes the unsigned FIT.
    open_door = qemu.check_fit(arch, plain, unsigned, machine_args=margs, log_path=tmp_path / "plain.log")
    assert open_door.statuses == [0] and not open_door.refusals, open_door.summary()


def _layers(series: str) -> Path | None:
    value = os.environ.get({"scarthgap": "SEGWAY_LAYERS_DIR", "wrynose": "SEGWAY_WRYNOSE_LAYERS_DIR"}[series])
    return Path(value) if value else None


@pytest.mark.parametrize("series", sorted(PINNED))
def test_pinned_options_match_the_checkouts(series):
    root = _layers(series)
    if root is None:
        pytest.skip("set SEGWAY_LAYERS_DIR / SEGWAY_WRYNOSE_LAYERS_DIR to layer checkouts")
    core = next(p for p in (root / "poky/meta", root / "openembedded-core/meta") if p.is_dir())
    for machine, pinned in PINNED[series].items():
        base = core / "conf/machine" / ("%s.conf" % machine.removesuffix("-secureboot"))
        d = evaluate([base, root / "meta-arm/meta-arm/conf/machine" / ("%s.conf" % machine)])
        for name in QB_VARS:
            assert d.getVar(name) == pinned[name], "%s %s: %s" % (series, machine, name)
    # runqemu replaces @DEPLOY_DIR_IMAGE@ in QB_OPT_APPEND (and only there).
    runqemu = (core.parent / "scripts/runqemu").read_text()
    assert "self.get('QB_OPT_APPEND').replace('@DEPLOY_DIR_IMAGE@'" in runqemu
