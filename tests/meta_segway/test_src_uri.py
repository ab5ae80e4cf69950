"""Every file:// entry in a SRC_URI of meta-segway exists where bitbake's FILESPATH would look."""
from __future__ import annotations

import re

import pytest

from .layer import LAYER, metadata_files

FILE_ENTRY = re.compile(r"file://([A-Za-z0-9_.+-][^\s;\"'\\]*)")
# Directories that classes add to FILESEXTRAPATHS for the recipes that inherit them.
CLASS_FILE_DIRS = {
    "segway_kernel": LAYER / "recipes-kernel/linux/files",
    "segway_uboot": LAYER / "recipes-bsp/u-boot/files",
}
# The FILESOVERRIDES entries of each kas machine that have their own files/<override>/ (checked with
# bitbake -e against the pinned layers: meta-freescale filters the bare "mx8mm" override out, and
# segway-ab-boot-ok adds mx8mm-u-boot-imx when u-boot-imx is the bootloader).
MACHINE_FILE_OVERRIDES = {
    "qemuarm64-secureboot": ("qemuall",),
    "qemuarm-secureboot": ("qemuall",),
    "stm32mp15-disco": ("stm32mp15common",),
    "stm32mp15-eval": ("stm32mp15common",),
    "imx8mm-lpddr4-evk (u-boot-fslc)": ("mx8mm-generic-bsp",),
    "imx8mm-lpddr4-evk (u-boot-imx)": ("mx8mm-generic-bsp", "mx8mm-u-boot-imx"),
}
MACHINE_OVERRIDES = tuple(sorted({o for overrides in MACHINE_FILE_OVERRIDES.values() for o in overrides}))


def search_dirs(path):
    """FILESPATH of a recipe, append or class: ${BP}, ${BPN}, files/ next to it, and the
    directories added by the segway classes it inherits."""
    text = path.read_text()
    base = path.name.split("_")[0].rsplit(".", 1)[0]
    dirs = [path.parent / base, path.parent / "files", path.parent]
    version = path.stem.split("_")[1] if "_" in path.stem else ""
    if version and version != "%":
        dirs.insert(0, path.parent / ("%s-%s" % (base, version)))
    inherited = set(re.findall(r"^inherit\s+(.*)$", text, re.M))
    names = {name for line in inherited for name in line.split()}
    if path.suffix == ".bbclass":
        names.add(path.stem)
    for cls, directory in CLASS_FILE_DIRS.items():
        if cls in names:
            dirs.append(directory)
    return dirs


def file_entries(path):
    text = path.read_text()
    entries = []
    for expression in re.findall(r"^\s*SRC_URI[^=]*=\s*\"((?:[^\"\\]|\\.|\\\n)*)\"", text, re.M | re.S):
        entries += FILE_ENTRY.findall(expression)
    # Kernel fragments are named in SEGWAY_KERNEL_FRAGMENTS and turned into file:// entries.
    for expression in re.findall(r"^SEGWAY_KERNEL_FRAGMENTS \?= \"((?:[^\"\\]|\\.|\\\n)*)\"", text, re.M | re.S):
        entries += re.findall(r"(segway-[a-z0-9-]+\.cfg)", expression)
    return entries


FILES = [p for p in metadata_files() if file_entries(p)]


def test_some_recipes_ship_files():
    assert len(FILES) >= 5


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LAYER)))
def test_file_entries_exist(path):
    dirs = search_dirs(path)
    for entry in file_entries(path):
        assert "${" not in entry, "%s: computed file:// entry %s" % (path.name, entry)
        found = [d / sub / entry for d in dirs for sub in ("",) + MACHINE_OVERRIDES if (d / sub / entry).is_file()]
        assert found, "%s: file://%s not found in %s" % (path.name, entry, [str(d.relative_to(LAYER)) for d in dirs])


def test_every_shipped_file_is_used():
    """No orphaned files next to recipes (a renamed file:// would leave the old one behind)."""
    used = {entry for p in metadata_files() for entry in file_entries(p)}
    for f in LAYER.rglob("*"):
        if f.is_file() and "recipes-" in str(f.relative_to(LAYER)) and not f.name.endswith(
                (".bb", ".bbappend", ".inc")):
            assert f.name in used, "%s is not referenced by any SRC_URI" % f.relative_to(LAYER)


@pytest.mark.parametrize("machine", sorted(MACHINE_FILE_OVERRIDES))
def test_every_machine_finds_its_uboot_environment_description(machine):
    """fw_env.config exists only per machine: each kas machine must find one through its own overrides."""
    recipe = LAYER / "recipes-bsp/segway-ab/segway-ab-boot-ok_1.0.bb"
    found = [d / o / "fw_env.config" for d in search_dirs(recipe) for o in MACHINE_FILE_OVERRIDES[machine]
             if (d / o / "fw_env.config").is_file()]
    assert found, "%s: no fw_env.config under files/{%s}/" % (machine, ",".join(MACHINE_FILE_OVERRIDES[machine]))
