"""A/B fallback: U-Boot counts boot attempts, altbootcmd switches boot_slot after bootlimit
failures, every U-Boot recipe boots the slot named by boot_slot, the release flavour's locked
environment still lets the A/B variables through, and segway-ab-boot-ok ends the trial with
libubootenv on the environment location of each machine."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .layer import LAYER, evaluate, import_bb
from .uboot_config import UBOOT_APPENDS, UBOOT_FILES, read_fragment

AB = LAYER / "recipes-bsp/segway-ab"
BOOTCOUNT = read_fragment(UBOOT_FILES / "segway-bootcount.cfg")
# Every fw_env.config the layer ships (files/<machine override>/); where each must point is
# checked against the vendor trees in test_uboot_vendor_trees.py.
FW_ENV_CONFIGS = sorted(p.relative_to(AB / "files") for p in (AB / "files").glob("*/fw_env*.config"))


def test_boot_counting_is_on_with_a_limit():
    assert BOOTCOUNT["CONFIG_BOOTCOUNT_LIMIT"] == "y"
    assert BOOTCOUNT["CONFIG_BOOTCOUNT_ENV"] == "y"
    assert int(BOOTCOUNT["CONFIG_BOOTCOUNT_BOOTLIMIT"]) > 0
    assert BOOTCOUNT["CONFIG_CMD_SAVEENV"] == "y"
    assert BOOTCOUNT["CONFIG_USE_PREBOOT"] == "y"
    assert "setenv bootlimit %s" % BOOTCOUNT["CONFIG_BOOTCOUNT_BOOTLIMIT"] in BOOTCOUNT["CONFIG_PREBOOT"]


@pytest.mark.parametrize("recipe", sorted(UBOOT_APPENDS))
def test_every_uboot_recipe_boots_the_active_slot(recipe):
    append, overrides = UBOOT_APPENDS[recipe]
    path = LAYER / append
    assert re.search(r"^inherit .*\bsegway_uboot\b", path.read_text(), re.M)
    d = evaluate([path], {"OVERRIDES": overrides})
    cfgs = [u.removeprefix("file://") for u in d.getVar("SRC_URI").split() if u.endswith(".cfg")]
    commands = []
    for cfg in cfgs:
        found = [p for p in (path.parent / "files" / cfg, UBOOT_FILES / cfg) if p.is_file()]
        assert found, cfg
        commands.append(read_fragment(found[0]).get("CONFIG_BOOTCOMMAND"))
    commands = [c for c in commands if c]
    assert len(commands) == 1, "%s: one boot command fragment expected, got %s" % (path.name, cfgs)
    bootcmd = commands[0]
    # Slot a unless the environment says b; the slot picks the partition and the signed FIT
    # configuration. A boot that fails resets, so the next attempt is counted.
    assert re.search(r'if test \\?"\$\{boot_slot\}\\?" (= b|!= b)', bootcmd)
    assert re.search(r"bootm \S+#conf-\S*\$\{boot_slot\}; reset$", bootcmd), bootcmd


def test_release_environment_lets_the_ab_variables_through(tmp_path):
    locked = read_fragment(UBOOT_FILES / "segway-console-locked.cfg")
    assert locked["CONFIG_ENV_WRITEABLE_LIST"] == "y"
    import_bb()
    cls = LAYER / "classes/segway_uboot.bbclass"
    d = evaluate([cls], {"OVERRIDES": "segway", "UNPACKDIR": str(tmp_path), "SEGWAY_UBOOT_CONSOLE_LOCKED": "1",
                         "SEGWAY_LAYERDIR": str(LAYER)})
    assert "file://segway-env-flags.h" in d.getVar("SRC_URI").split()
    kcflags = re.search(r"KCFLAGS='([^']*)'", d.getVar("EXTRA_OEMAKE")).group(1)
    assert kcflags == "-include %s/segway-env-flags.h" % tmp_path
    # Compile with exactly those flags: U-Boot's include/env_flags.h keeps a prior definition.
    shutil.copy(UBOOT_FILES / "segway-env-flags.h", tmp_path)
    probe = tmp_path / "probe.c"
    probe.write_text('#ifndef CFG_ENV_FLAGS_LIST_STATIC\n#define CFG_ENV_FLAGS_LIST_STATIC ""\n#endif\n'
                     '#include <stdio.h>\nint main(void) { puts(CFG_ENV_FLAGS_LIST_STATIC); return 0; }\n')
    subprocess.run(["gcc", *kcflags.split(), "-o", str(tmp_path / "probe"), str(probe)], check=True)
    flags = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True, text=True).stdout.strip()
    access = dict(item.split(":") for item in flags.split(","))
    # Every variable altbootcmd, the boot commands and fw_setenv change must be writeable (w).
    for name in ("boot_slot", "upgrade_available", "bootcount"):
        assert "w" in access[name][1:], name
    unlocked = evaluate([cls], {"OVERRIDES": "segway", "UNPACKDIR": str(tmp_path), "SEGWAY_UBOOT_CONSOLE_LOCKED": "0",
                                "SEGWAY_LAYERDIR": str(LAYER)})
    assert "file://segway-env-flags.h" not in unlocked.getVar("SRC_URI").split()
    assert "KCFLAGS=''" in unlocked.getVar("EXTRA_OEMAKE")


class UBootConsole:
    """U-Boot in QEMU on a pipe: type a command, wait for a pattern."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while chunk := self.proc.stdout.read1(4096):
            self.output.extend(chunk)

    def wait(self, pattern, start=0, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.output[start:].decode(errors="replace"))
            if m:
                return m
            time.sleep(0.1)
        raise AssertionError("no %r in U-Boot output:\n%s" % (pattern, self.output.decode(errors="replace")[-3000:]))

    def run(self, line, pattern="=> ", timeout=120):
        start = len(self.output)
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.wait(pattern, start, timeout)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.mark.qemu
def test_altbootcmd_switches_slots_in_uboot():
    """The preboot string of the fragment, typed into a real U-Boot (Debian's qemu_arm64 build:
    same hush shell), defines an altbootcmd that flips boot_slot and ends the trial."""
    qemu = shutil.which("qemu-system-aarch64")
    uboot = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
    if not qemu or not uboot.is_file():
        pytest.skip("needs qemu-system-arm and u-boot-qemu (scripts/apt-packages.txt)")
    console = UBootConsole([qemu, "-M", "virt", "-cpu", "cortex-a57", "-m", "256", "-nographic", "-nodefaults",
                            "-serial", "stdio", "-bios", str(uboot)])
    try:
        console.wait("Hit any key")
        console.run("", "=> ")
        console.run(BOOTCOUNT["CONFIG_PREBOOT"])
        console.run("setenv bootcmd 'echo SEGWAY_BOOT slot=${boot_slot} trial=${upgrade_available} count=${bootcount}'")
        console.run("printenv bootlimit", "bootlimit=%s" % BOOTCOUNT["CONFIG_BOOTCOUNT_BOOTLIMIT"])
        console.run("setenv boot_slot a; setenv upgrade_available 1; setenv bootcount 4")
        # saveenv fails on this board's unbacked flash; the switch must not depend on it.
        assert console.run("run altbootcmd", r"SEGWAY_BOOT \S+ \S+ \S+").group(0) == "SEGWAY_BOOT slot=b trial=0 count=0"
        console.run("setenv upgrade_available 1; setenv bootcount 4")
        assert console.run("run altbootcmd", r"SEGWAY_BOOT \S+ \S+ \S+").group(0) == "SEGWAY_BOOT slot=a trial=0 count=0"
    finally:
        console.stop()


def fw_env_entries(config):
    entries = []
    for line in (AB / "files" / config).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            device, offset, size, *rest = line.split()
            entries.append((device, int(offset, 16), int(size, 16), rest))
    return entries


def test_recipe_installs_config_unit_and_image_has_it():
    bb = import_bb()
    d = evaluate([AB / "segway-ab-boot-ok_1.0.bb"], {"PN": "segway-ab-boot-ok"})
    bb.data.expandKeys(d)
    assert "file://fw_env.config" in d.getVar("SRC_URI").split()
    assert d.getVar("RDEPENDS:segway-ab-boot-ok").split() == ["libubootenv-bin"]
    assert d.getVar("SYSTEMD_SERVICE:segway-ab-boot-ok") == "segway-ab-boot-ok.service"
    assert re.search(r"^\s+segway-ab-boot-ok \\$", (LAYER / "recipes-core/images/segway-image.bb").read_text(), re.M)
    unit = (AB / "files/segway-ab-boot-ok.service").read_text()
    assert "ExecStart=@BINDIR@/fw_setenv -s @DATADIR@/segway/ab-boot-ok.env" in unit
    assert "WantedBy=multi-user.target" in unit


@pytest.mark.parametrize("config", FW_ENV_CONFIGS, ids=str)
def test_fw_env_config_copies_do_not_overlap(config):
    entries = fw_env_entries(config)
    assert 1 <= len(entries) <= 2
    spans = sorted((dev, off, off + size) for dev, off, size, _ in entries)
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:]))


def unit_command(key):
    unit = (AB / "files/segway-ab-boot-ok.service").read_text()
    return re.search(r"^%s=(.*)$" % key, unit, re.M).group(1)


@pytest.mark.parametrize("config", FW_ENV_CONFIGS, ids=str)
def test_boot_ok_ends_the_trial_with_libubootenv(tmp_path, config):
    """Write an environment image with U-Boot's mkenvimage where the machine's fw_env.config says
    U-Boot keeps it (device replaced by a file), then run the unit's own commands with
    libubootenv's fw_printenv/fw_setenv."""
    tools = [shutil.which(t) for t in ("mkenvimage", "fw_printenv", "fw_setenv")]
    if not all(tools):
        pytest.skip("needs u-boot-tools and libubootenv-tool (scripts/apt-packages.txt)")
    entries = fw_env_entries(config)
    store = tmp_path / "store.img"
    with open(store, "wb") as f:
        f.truncate(max(off + size for _, off, size, _ in entries))
    text = tmp_path / "env.txt"
    text.write_text("boot_slot=b\nupgrade_available=1\nbootcount=2\nbootlimit=3\n")
    redundant = ["-r"] if len(entries) == 2 else []
    image = tmp_path / "env.bin"
    subprocess.run(["mkenvimage", *redundant, "-s", str(entries[0][2]), "-o", str(image), str(text)], check=True)
    with open(store, "r+b") as f:
        for _, offset, _, _ in entries:
            f.seek(offset)
            f.write(image.read_bytes())
    config = tmp_path / "fw_env.config"
    config.write_text("".join("%s 0x%x 0x%x %s\n" % (store, off, size, " ".join(rest)) for _, off, size, rest in entries))

    def sh(command):
        command = command.replace("@BINDIR@/", "").replace("@DATADIR@/segway/ab-boot-ok.env",
                                                           str(AB / "files/segway-ab-boot-ok.env"))
        command = command.replace("fw_printenv ", "fw_printenv -c %s " % config).replace(
            "fw_setenv ", "fw_setenv -c %s " % config)
        shell = re.fullmatch(r"/bin/sh -c '(.*)'", command)
        argv = ["/bin/sh", "-c", shell.group(1)] if shell else command.split()
        return subprocess.run(argv, capture_output=True, text=True)

    condition = unit_command("ExecCondition")
    assert sh(condition).returncode == 0, "trial running: the unit must run"
    assert sh(unit_command("ExecStart")).returncode == 0
    printed = subprocess.run(["fw_printenv", "-c", str(config)], check=True, capture_output=True, text=True).stdout
    assert dict(line.split("=", 1) for line in printed.split()) == {
        "boot_slot": "b", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3"}
    assert sh(condition).returncode != 0, "no trial: the unit must not write the environment again"
