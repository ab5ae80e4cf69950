"""The QEMU boot command carries the distro's hardened kernel command line: u-boot_%.bbappend's
do_configure prepend, run as bitbake runs it, fills the fragment's placeholder, and runs again
with a changed command line (do_configure without a new unpack) from the fetched template."""
from __future__ import annotations

import shutil
import subprocess

from .layer import LAYER, evaluate
from .uboot_config import read_fragment

APPEND = LAYER / "recipes-bsp/u-boot/u-boot_%.bbappend"
FRAGMENT = LAYER / "recipes-bsp/u-boot/files/segway-qemu-boot.cfg"
SIGNING = LAYER / "conf/distro/include/segway-signing.inc"
RELEASE = LAYER / "conf/distro/include/segway-flavour-release.inc"


def configure(tmp_path, *includes, **values):
    d = evaluate([*includes, APPEND], {"OVERRIDES": "segway:qemuall", "UNPACKDIR": str(tmp_path), **values},
                 shell_functions=True)
    subprocess.run(["bash", "-euc", d.getVar("do_configure")], check=True, cwd=tmp_path)
    return d, read_fragment(tmp_path / FRAGMENT.name)["CONFIG_BOOTCOMMAND"]


def bootargs(bootcmd: str) -> str:
    [value] = [c.split('setenv bootargs "', 1)[1].rstrip('"') for c in bootcmd.split("; ") if "setenv bootargs" in c]
    return value


def test_boot_command_gets_the_hardened_command_line(tmp_path):
    shutil.copy(FRAGMENT, tmp_path)
    assert "@SEGWAY_KERNEL_CMDLINE@" in read_fragment(FRAGMENT)["CONFIG_BOOTCOMMAND"]
    d, bootcmd = configure(tmp_path, SIGNING, RELEASE)
    cmdline = d.getVar("SEGWAY_KERNEL_CMDLINE").split()
    assert not any(c in " ".join(cmdline) for c in '|&\\"'), "not safe in the sed replacement or the Kconfig string"
    args = bootargs(bootcmd).split()
    assert args[0] == "console=ttyAMA0" and args[1:1 + len(cmdline)] == cmdline
    assert args[-2:] == ["root=PARTLABEL=rootfs-${boot_slot}", "segway.slot=${boot_slot}"]
    for must in ("dm_verity.require_signatures=1", "module.sig_enforce=1", "lockdown=confidentiality", "ro", "quiet"):
        assert must in args, must
    # A changed command line reaches the fragment on the next do_configure, from the template.
    _, again = configure(tmp_path, SIGNING, SEGWAY_KERNEL_CMDLINE="rootwait ro")
    assert bootargs(again).split() == ["console=ttyAMA0", "rootwait", "ro", "root=PARTLABEL=rootfs-${boot_slot}",
                                       "segway.slot=${boot_slot}"]
