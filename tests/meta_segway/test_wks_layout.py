"""The disk image layout: segway-ab.wks.in expanded with segway-image.bb's variables for each machine
family, checked against what the boot ROMs, TF-A and the vendor U-Boot trees look for.

Facts from outside this repository are pinned here or in data/uboot-vendor-trees.yaml:
meta-st-stm32mp (kas/stm32mp157.yml commit) wic/sdcard-stm32mp157f-dk2-optee-1GB.wks.in for ST's
first-stage partitions, and meta-freescale (kas/imx8mm.yml commit) IMX_BOOT_SEEK for i.MX8M Mini.
"""
from __future__ import annotations

import fnmatch
import shlex

import pytest

from .layer import LAYER, evaluate
from .uboot_config import vendor_trees

IMAGE = LAYER / "recipes-core/images/segway-image.bb"
WKS = LAYER / "files/wic/segway-ab.wks.in"
STM32_RECIPE = LAYER / "dynamic-layers/stm-st-stm32mp/recipes-bsp/segway-stm32mp/segway-stm32mp-signed-boot_1.0.bb"
IMX_RECIPE = LAYER / "dynamic-layers/freescale-layer/recipes-bsp/segway-imx/segway-imx-signed-boot_1.0.bb"

# ST's first-stage GPT partitions: name -> (size, partition type, partition UUID or None). The FWU
# metadata.bin TF-A reads names fip-a/fip-b by these UUIDs.
ST_FIRST_STAGE = {
    "fsbl1": ("256K", "0x8301", None),
    "fsbl2": ("256K", "0x8301", None),
    "metadata1": ("256K", "0x8301", None),
    "metadata2": ("256K", "0x8301", None),
    "fip-a": ("4096K", "19d5df83-11b0-457b-be2c-7559c13142a5", "4fd84c93-54ef-463f-a7ef-ae25ff887087"),
    "fip-b": ("4096K", "19d5df83-11b0-457b-be2c-7559c13142a5", "09c54952-d5bf-45af-acee-335303766fb3"),
}
# ST's deploy names (tf-a-stm32mp-common.inc, fip-utils-stm32mp.bbclass): tf-a-<dt>-<config>.stm32 and
# fip-<dt>-<config>.bin; the SD card boots the "sdcard" TF-A and the "optee" FIP.
ST_FSBL_NAME = "arm-trusted-firmware/tf-a-{dt}-sdcard.stm32"
ST_FIP_NAME = "fip/fip-{dt}-optee.bin"
IMX_BOOT_SEEK = "33"  # meta-freescale conf/machine/include/imx-base.inc for mx8mm


def _layout(overrides: str, **preset) -> list[dict]:
    values = {"OVERRIDES": overrides, "DEPLOY_DIR_IMAGE": "/deploy", "IMGDEPLOYDIR": "/imgdeploy", "PN": "segway-image",
              "MACHINE": "m", "SEGWAY_VERITY_FSTYPE": "ext4"}
    values.update(preset)
    d = evaluate([IMAGE], values)
    parts = []
    for line in d.expand(WKS.read_text()).splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] != "part":
            continue
        part = {"mount": None if words[1].startswith("--") else words[1]}
        options = words[1:] if part["mount"] is None else words[2:]
        i = 0
        while i < len(options):
            key = options[i].lstrip("-")
            if "=" in key:  # --option=value
                key, value = key.split("=", 1)
                part[key], i = value, i + 1
            elif i + 1 < len(options) and not options[i + 1].startswith("--"):
                part[key], i = options[i + 1], i + 2
            else:
                part[key], i = True, i + 1
        parts.append(part)
    return parts


def _names(parts):
    return [p.get("part-name") or p.get("mount") for p in parts]


def _signed_name(original: str) -> str:
    """What segway-stm32mp-signed-boot deploys for an ST image (root + _Signed + ext in segway-signed/)."""
    root, dot, ext = original.rpartition("/")[2].rpartition(".")
    return "segway-signed/%s_Signed.%s" % (root, ext)


def _glob(recipe, var):
    d = evaluate([recipe])
    return d.getVar(var)


def test_qemu_layout_is_the_ab_set_only():
    parts = _layout("qemuall")
    assert _names(parts) == ["boot-a", "boot-b", "rootfs-a", "rootfs-b", "data"]
    assert parts[0]["align"] == "4096"


def test_stm32mp15_first_stage_partitions():
    dt = "stm32mp157f-dk2"
    parts = _layout("stm32mp15common", STM32MP_DEVICETREE=" %s " % dt)
    env = vendor_trees()["trees"]["u-boot-stm32mp"]["env"]
    assert _names(parts) == list(ST_FIRST_STAGE) + [env["partition"], "boot-a", "boot-b", "rootfs-a", "rootfs-b",
                                                    "data"]
    for part in parts[:len(ST_FIRST_STAGE)]:
        size, ptype, uuid = ST_FIRST_STAGE[part["part-name"]]
        assert (part["fixed-size"], part["part-type"], part.get("uuid")) == (size, ptype, uuid), part
        assert part["source"] == "rawcopy" and part["ondisk"] == "mmcblk"
    assert parts[0]["align"] == "17"  # after the primary GPT
    # the signed FSBL and FIP: what segway-stm32mp-signed-boot signs and deploys from ST's names
    fsbl, fip = ST_FSBL_NAME.format(dt=dt), ST_FIP_NAME.format(dt=dt)
    assert fnmatch.fnmatch(fsbl, _glob(STM32_RECIPE, "SEGWAY_STM32_FSBL_GLOB"))
    assert fnmatch.fnmatch(fip, _glob(STM32_RECIPE, "SEGWAY_STM32_FIP_GLOB"))
    files = {p["part-name"]: p["sourceparams"] for p in parts[:len(ST_FIRST_STAGE)]}
    assert files["fsbl1"] == files["fsbl2"] == "file=/deploy/" + _signed_name(fsbl)
    assert files["fip-a"] == files["fip-b"] == "file=/deploy/" + _signed_name(fip)
    # the environment partition ST's U-Boot opens by name, with room for both copies at its end
    env_part = parts[len(ST_FIRST_STAGE)]
    assert env_part["part-name"] == env["partition"] and env_part["source"] == "empty"
    assert int(env_part["fixed-size"].rstrip("K")) * 1024 == env["partition_size"] >= 2 * env["size"]


@pytest.mark.parametrize("bootloader", ["u-boot-fslc", "u-boot-imx"])
def test_imx8mm_boot_container_and_environment_clearance(bootloader):
    parts = _layout("mx8m-generic-bsp", IMX_BOOT_SEEK=IMX_BOOT_SEEK, MACHINE="imx8mm-lpddr4-evk")
    assert _names(parts) == ["u-boot", "boot-a", "boot-b", "rootfs-a", "rootfs-b", "data"]
    container = parts[0]
    assert container.get("no-table") is True and container["align"] == IMX_BOOT_SEEK
    # the HAB-signed container segway-imx-signed-boot deploys
    d = evaluate([IMX_RECIPE], {"MACHINE": "imx8mm-lpddr4-evk"})
    assert container["sourceparams"] == "file=/deploy/%s-imx8mm-lpddr4-evk.signed" % d.getVar("SEGWAY_IMX_BOOT_IMAGE")
    env = vendor_trees()["trees"][bootloader]["env"]
    assert int(parts[1]["align"]) * 1024 >= env["offset"] + env["size"]


def test_stm32_release_plan_takes_what_the_build_deploys():
    """A deferred build's release job reads ST's deploy names for the one device tree the build keys
    (UBOOT_DEVICETREE of the pinned tree), and the FWU metadata the wks puts in metadata1/2."""
    import yaml

    from .layer import REPO

    [dt] = vendor_trees()["trees"]["u-boot-stm32mp"]["machines"]["stm32mp15-disco"]["device_trees"]
    plan = yaml.safe_load((REPO / "conf/signing/stm32mp157.yaml").read_text())
    inputs = {step["id"]: step["inputs"] for step in plan["steps"]}
    assert inputs["tfa-bl2"]["image"] == ST_FSBL_NAME.format(dt=dt)
    assert inputs["fip"]["fip"] == ST_FIP_NAME.format(dt=dt)
    parts = {p["part-name"]: p for p in _layout("stm32mp15common", STM32MP_DEVICETREE=dt) if "part-name" in p}
    assert parts["metadata1"]["sourceparams"] == parts["metadata2"]["sourceparams"] == \
        "file=/deploy/" + inputs["fwu-metadata"]["metadata"]


@pytest.mark.parametrize("container,provider", [("1", "virtual/bootloader"), ("0", "imx-boot")])
def test_imx_signing_takes_the_container_from_its_one_provider(container, provider):
    """u-boot-fslc's binman (UBOOT_PROVIDES_BOOT_CONTAINER = "1", meta-freescale's i.MX8M default) and
    NXP's imx-boot both deploy "imx-boot": the signing recipe waits for the one that builds it, and the
    release plan of a deferred build reads the same name."""
    import yaml

    from .layer import REPO

    d = evaluate([IMX_RECIPE], {"MACHINE": "imx8mm-lpddr4-evk", "UBOOT_PROVIDES_BOOT_CONTAINER": container})
    assert d.getVarFlag("do_compile", "depends").split() == ["%s:do_deploy" % provider]
    plan = yaml.safe_load((REPO / "conf/signing/imx8mm.yaml").read_text())
    [step] = [s for s in plan["steps"] if s["id"] == "imx-boot"]
    assert step["inputs"]["image"] == d.getVar("SEGWAY_IMX_BOOT_IMAGE") == "imx-boot"
