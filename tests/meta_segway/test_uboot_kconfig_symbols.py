"""Every CONFIG_* symbol a U-Boot recipe of the layer merges exists in the U-Boot tree that recipe
builds. The symbols of each tree (data/uboot-vendor-trees.yaml) were checked against that tree's
Kconfig files at the pinned commit; U-Boot's kconfig silently drops an unknown symbol from a
fragment, so a misspelt or vendor-missing option would otherwise build without the protection it
names."""
from __future__ import annotations

import pytest

from .uboot_config import UBOOT_APPENDS, fragments, read_fragment, recipe_fragments, vendor_trees

TREES = vendor_trees()["trees"]
FRAGMENTS = fragments()


def test_fragments_are_found():
    names = {p.name for p in FRAGMENTS}
    assert {"segway-fit-verify.cfg", "segway-bootcount.cfg", "segway-console-locked.cfg",
            "segway-qemu-boot.cfg", "segway-stm32mp-boot.cfg", "segway-imx-boot.cfg"} <= names


def test_every_fragment_reaches_a_checked_tree():
    used = {p for recipe in UBOOT_APPENDS for p in recipe_fragments(recipe)}
    assert sorted(p.name for p in set(FRAGMENTS) - used) == []


def test_poky_uboot_is_the_scarthgap_release():
    # poky scarthgap: meta/recipes-bsp/u-boot/u-boot-common.inc (PV 2024.01, SRCREV below).
    assert TREES["u-boot"]["tag"] == "v2024.01"
    assert TREES["u-boot"]["commit"] == "866ca972d6c3cabeaf6dbac431e8e08bb30b3c8e"


@pytest.mark.parametrize("recipe", sorted(UBOOT_APPENDS))
@pytest.mark.parametrize("locked", [True, False], ids=["release", "development"])
def test_fragment_symbols_exist_in_the_tree_the_recipe_builds(recipe, locked):
    known = TREES[recipe]["symbols"]
    for fragment in recipe_fragments(recipe, locked):
        unknown = sorted(s for s in read_fragment(fragment) if s.removeprefix("CONFIG_") not in known)
        assert not unknown, "%s: not Kconfig symbols of %s %s: %s" % (
            fragment.name, TREES[recipe]["repository"], TREES[recipe]["tag"], unknown)


@pytest.mark.parametrize("recipe", sorted(UBOOT_APPENDS))
def test_pinned_symbols_are_the_ones_the_recipe_uses(recipe):
    used = {s.removeprefix("CONFIG_") for p in recipe_fragments(recipe) for s in read_fragment(p)}
    assert sorted(set(TREES[recipe]["symbols"]) ^ used) == []


def test_reader_rejects_malformed_lines(tmp_path):
    bad = tmp_path / "u-boot" / "bad.cfg"
    bad.parent.mkdir()
    bad.write_text('CONFIG_BOOTCOMMAND="unterminated\n')
    with pytest.raises(ValueError, match="bad.cfg:1"):
        read_fragment(bad)
