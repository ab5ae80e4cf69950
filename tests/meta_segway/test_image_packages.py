"""Every package a segway image installs (and every runtime dependency of segway's recipes) is built
by a meta-segway recipe or by a recipe of a layer meta-segway depends on."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from .layer import LAYER, evaluate, import_bb, metadata_files

MANIFEST = yaml.safe_load((Path(__file__).parent / "data" / "dependency-packages.yaml").read_text())
DISTRO_INCS = [LAYER / "conf/distro/include" / n for n in ("segway-flavour-development.inc",)]
# Machine features of the kas machines that decide optional packages.
PRESET = {"MACHINE_FEATURES": "optee-ftpm", "CORE_IMAGE_EXTRA_INSTALL": "", "SEGWAY_FLAVOUR": "development",
          "IMAGE_FEATURES": "", "IMAGE_FSTYPES": "", "SEGWAY_SIGN_MODE": "hsm"}


def layer_collections():
    text = (LAYER / "conf" / "layer.conf").read_text()
    return set(re.search(r'LAYERDEPENDS_segway = "([^"]*)"', text, re.S).group(1).replace("\\", " ").split())


def own_packages():
    """PN of every meta-segway recipe (each ships one package named after the recipe)."""
    return {p.name.split("_")[0] for p in metadata_files((".bb",))}


def installed(recipe, var, extra=()):
    bb = import_bb()
    d = evaluate(DISTRO_INCS + [LAYER / recipe], dict(PRESET, PN=Path(recipe).name.split("_")[0].removesuffix(".bb")))
    bb.data.expandKeys(d)
    return set(d.getVar(var).split()) | set(extra)


def rdepends(recipe):
    bb = import_bb()
    pn = Path(recipe).name.split("_")[0]
    d = evaluate([LAYER / recipe], {"PN": pn})
    bb.data.expandKeys(d)
    return set((d.getVar("RDEPENDS:" + pn) or "").split())


CASES = {
    "segway-image": installed("recipes-core/images/segway-image.bb", "IMAGE_INSTALL",
                              extra=["openssh-sshd", "segway-test-access", "openssl-bin"]),
    "segway-initramfs": installed("recipes-core/images/segway-initramfs.bb", "PACKAGE_INSTALL"),
    "segway-kms": rdepends("recipes-security/segway-kms/segway-kms_0.1.0.bb"),
    "initramfs-module-segway-verity": rdepends("recipes-core/initrdscripts/initramfs-module-segway-verity_1.0.bb"),
    "segway-ab-boot-ok": rdepends("recipes-bsp/segway-ab/segway-ab-boot-ok_1.0.bb"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_packages_have_a_provider(name):
    packages = CASES[name]
    assert packages, "no packages found"
    allowed = layer_collections()
    ours = own_packages()
    for package in sorted(packages):
        assert "${" not in package, package
        if package in ours:
            continue
        assert package in MANIFEST, "%s installs %s: no meta-segway recipe and not in dependency-packages.yaml" % (name, package)
        assert MANIFEST[package]["layer"] in allowed, "%s comes from %s, which is not in LAYERDEPENDS_segway" % (
            package, MANIFEST[package]["layer"])


def test_image_installs_the_security_stack():
    packages = CASES["segway-image"]
    for required in ("optee-client", "optee-os-ta", "optee-ftpm", "tpm2-tss", "tpm2-tools", "segway-kms",
                     "segway-hardening", "segway-ab-boot-ok"):
        assert required in packages


@pytest.mark.skipif(not os.environ.get("SEGWAY_LAYERS_DIR"), reason="set SEGWAY_LAYERS_DIR to layer checkouts")
def test_manifest_matches_checkouts():
    root = Path(os.environ["SEGWAY_LAYERS_DIR"])
    for package, entry in MANIFEST.items():
        recipe = root / entry["repo"] / entry["recipe"]
        assert recipe.is_file(), "%s: %s does not exist" % (package, recipe)
