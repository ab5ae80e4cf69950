"""Every CONFIG_* symbol in meta-segway's U-Boot fragments exists in the U-Boot scarthgap builds.
The list of known symbols (data/uboot-kconfig-symbols.yaml) was checked against the Kconfig files
of the pinned U-Boot tag; U-Boot's kconfig silently drops an unknown symbol from a fragment, so a
misspelt option would otherwise build without the protection it names."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .uboot_config import fragments, read_fragment

KNOWN = yaml.safe_load((Path(__file__).parent / "data" / "uboot-kconfig-symbols.yaml").read_text())
FRAGMENTS = fragments()


def test_fragments_are_found():
    names = {p.name for p in FRAGMENTS}
    assert {"segway-fit-verify.cfg", "segway-bootcount.cfg", "segway-console-locked.cfg",
            "segway-qemu-boot.cfg", "segway-stm32mp-boot.cfg", "segway-imx-boot.cfg"} <= names


def test_symbols_were_checked_against_scarthgap_uboot():
    # poky scarthgap: meta/recipes-bsp/u-boot/u-boot-common.inc (PV 2024.01, SRCREV below).
    assert KNOWN["uboot_tag"] == "v2024.01"
    assert KNOWN["uboot_commit"] == "866ca972d6c3cabeaf6dbac431e8e08bb30b3c8e"


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_fragment_symbols_are_uboot_kconfig_symbols(fragment):
    unknown = sorted(s for s in read_fragment(fragment) if s.removeprefix("CONFIG_") not in KNOWN["symbols"])
    assert not unknown, "%s: not Kconfig symbols of U-Boot %s: %s" % (fragment.name, KNOWN["uboot_tag"], unknown)


def test_known_list_holds_only_symbols_the_layer_uses():
    used = {s.removeprefix("CONFIG_") for p in FRAGMENTS for s in read_fragment(p)}
    assert sorted(set(KNOWN["symbols"]) - used) == []


def test_reader_rejects_malformed_lines(tmp_path):
    bad = tmp_path / "u-boot" / "bad.cfg"
    bad.parent.mkdir()
    bad.write_text('CONFIG_BOOTCOMMAND="unterminated\n')
    with pytest.raises(ValueError, match="bad.cfg:1"):
        read_fragment(bad)
