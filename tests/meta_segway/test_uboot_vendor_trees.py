"""meta-segway's U-Boot files against the facts pinned for the U-Boot trees the kas machines
really build (data/uboot-vendor-trees.yaml): ST's v2022.10-stm32mp for the STM32MP15 boards,
u-boot-fslc / NXP's u-boot-imx for the i.MX8M Mini EVK, poky's v2024.01 for QEMU. The facts were
read from those trees; these tests need none of them and fail when our fragments, fw_env.config
files or the kas pins drift away from what was checked."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .layer import KAS_DIR, LAYER, evaluate, import_bb, python_task, statements
from .uboot_config import (UBOOT_APPENDS, UBOOT_FILES, merged_options, read_fragment, recipe_fragments,
                           vendor_trees)

FACTS = vendor_trees()
TREES = FACTS["trees"]
MACHINES = [(tree, machine) for tree in sorted(TREES) for machine in TREES[tree]["machines"]]


def env_store(tree: str, machine: str) -> dict:
    return TREES[tree]["machines"][machine].get("env", TREES[tree]["env"])


STORED = [(tree, machine) for tree, machine in MACHINES if env_store(tree, machine)["kind"] != "nowhere"]
AB = LAYER / "recipes-bsp/segway-ab"


def kas_closure(path: Path) -> list[dict]:
    """A kas file and everything it includes (paths in includes are relative to the repository)."""
    doc = yaml.safe_load(path.read_text())
    docs = []
    for include in (doc.get("header") or {}).get("includes") or []:
        docs += kas_closure(KAS_DIR.parent / include)
    return docs + [doc]


def kas_files():
    """The kas files of the scarthgap build (the facts are for scarthgap's BSP branches): those
    that do not bring in another series' openembedded-core."""
    return [closure[-1] for closure in (kas_closure(p) for p in sorted(KAS_DIR.glob("*.yml")))
            if not any("openembedded-core" in (doc.get("repos") or {}) for doc in closure)]


def test_every_uboot_append_has_pinned_facts():
    appends = {p.name.split("_")[0] for p in LAYER.rglob("*.bbappend") if p.name.startswith("u-boot")}
    assert appends == set(TREES) == set(UBOOT_APPENDS)


def test_every_kas_machine_has_pinned_facts():
    pinned = {machine for _, machine in MACHINES}
    machines = {k["machine"] for k in kas_files() if "machine" in k}
    assert machines and machines <= pinned


@pytest.mark.parametrize("tree", sorted(TREES))
def test_facts_were_read_at_the_layer_commit_kas_pins(tree):
    # A BSP layer bump may change the U-Boot recipe: re-check the tree, then move the pin here.
    layers = {TREES[tree]["layer"]: TREES[tree]["layer_commit"], **TREES[tree].get("extra_layers", {})}
    for layer, commit in layers.items():
        commits = {k["repos"][layer].get("commit") for k in kas_files() if layer in (k.get("repos") or {})}
        assert commits == {commit}, layer


def fw_env_entries(path: Path):
    entries = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            device, offset, size, *rest = line.split()
            entries.append((device, int(offset, 16), int(size, 16), [int(r, 16) for r in rest]))
    return entries


def fw_env_config(tree: str, machine: str) -> Path:
    """The fw_env.config segway-ab-boot-ok fetches on this machine when tree is its bootloader:
    the first files/<override>/fw_env.config in FILESPATH order (bitbake searches the last
    FILESOVERRIDES entry first), with the recipe's own FILESOVERRIDES change applied."""
    bb = import_bb()
    overrides = TREES[tree]["machines"][machine]["machine_overrides"]
    d = evaluate([AB / "segway-ab-boot-ok_1.0.bb"],
                 {"PN": "segway-ab-boot-ok", "MACHINEOVERRIDES": overrides, "DISTROOVERRIDES": "poky:segway",
                  "FILESOVERRIDES": "${MACHINEOVERRIDES}:${DISTROOVERRIDES}",
                  "PREFERRED_PROVIDER_virtual/bootloader": tree})
    bb.data.expandKeys(d)
    assert "file://fw_env.config" in d.getVar("SRC_URI").split()
    for override in reversed(d.getVar("FILESOVERRIDES").split(":")):
        candidate = AB / "files" / override / "fw_env.config"
        if candidate.is_file():
            return candidate
    raise AssertionError("%s: no files/<override>/fw_env.config for %s" % (machine, overrides))


def expected_env_entries(env: dict):
    copies = 2 if env["redundant"] else 1
    if env["kind"] == "mmc-partition":
        # env/mmc.c: copy n sits at partition end - (n + 1) * ENV_SIZE.
        return [(env["linux_device"], env["partition_size"] - (n + 1) * env["size"], env["size"], [])
                for n in range(copies)]
    if env["kind"] == "mmc-raw":
        return [(env["linux_device"], env["offset"], env["size"], [])]
    assert env["kind"] == "flash"
    return [(env["linux_device"], env["offset"], env["size"], [env["sector_size"]])]


@pytest.mark.parametrize("tree,machine", STORED)
def test_fw_env_config_is_where_the_tree_keeps_its_environment(tree, machine):
    assert fw_env_entries(fw_env_config(tree, machine)) == expected_env_entries(env_store(tree, machine))


@pytest.mark.parametrize("tree,machine", sorted(set(MACHINES) - set(STORED)))
def test_machines_without_an_environment_store_are_named(tree, machine):
    # U-Boot keeps no environment there, so boot counting cannot work: the file that would
    # describe the store says so.
    assert machine in fw_env_config(tree, machine).read_text()


def test_imx_bootloaders_keep_their_environments_apart():
    # The two i.MX U-Boot flavours disagree on the store, so each needs its own file.
    fslc = fw_env_config("u-boot-fslc", "imx8mm-lpddr4-evk")
    imx = fw_env_config("u-boot-imx", "imx8mm-lpddr4-evk")
    assert fslc != imx and fw_env_entries(fslc) != fw_env_entries(imx)


def boot_command(tree: str) -> str:
    commands = [read_fragment(p).get("CONFIG_BOOTCOMMAND") for p in recipe_fragments(tree)]
    commands = [c for c in commands if c]
    assert len(commands) == 1, tree
    return commands[0]


def resolve(value: str, variables: dict) -> int | str:
    m = re.fullmatch(r"\$\{(\w+)\}", value)
    if m:
        assert m.group(1) in variables, "%s is not in the vendor default environment" % value
        return variables[m.group(1)]
    return int(value, 16) if value.startswith("0x") else value


@pytest.mark.parametrize("tree,machine", MACHINES)
def test_fit_is_loaded_clear_of_the_kernel_and_the_vendor_addresses(tree, machine):
    facts, board = TREES[tree], TREES[tree]["machines"][machine]
    bootcmd = boot_command(tree)
    load = re.search(r"\bload \S+ \S+ (\S+) fitImage", bootcmd).group(1)
    bootm = re.search(r"\bbootm (\S+?)#", bootcmd).group(1)
    assert load == bootm
    vendor = facts["defaults"]["env"]
    start = resolve(load, vendor)
    end = start + FACTS["fit_budget"]
    ram_start, ram_size = board["ram"]
    assert ram_start <= start and end <= ram_start + ram_size
    # Nothing the vendor environment places in memory lies inside the FIT's room.
    inside = sorted(name for name, addr in vendor.items() if start < addr < end)
    assert not inside, "%s: the FIT at %#x overlaps %s" % (tree, start, inside)
    if board["arch"] == "arm64":
        assert start >= ram_start + FACTS["arm64_kernel_window"], "%s: FIT inside the kernel's window" % tree


@pytest.mark.parametrize("tree,machine", MACHINES)
def test_boot_configuration_is_the_one_the_fit_has(tree, machine):
    board = TREES[tree]["machines"][machine]
    conf = re.search(r"#(conf-\S*)\$\{boot_slot\}", boot_command(tree)).group(1)
    conf = re.sub(r"\$\{board_name\}", board.get("board_name", "${board_name}"), conf)
    # segway-fit-image: conf-<DTB basename>-<slot>, or conf-<slot> without DTBs (QEMU).
    assert conf == ("conf-%s-" % board["fit_dtb"] if board["fit_dtb"] else "conf-")


@pytest.mark.parametrize("tree", sorted(t for t in TREES if "mmc_dev" in TREES[t]["env"]))
def test_boot_partitions_are_read_from_the_boot_mmc(tree):
    devices = set(re.findall(r"\bmmc (\d+)\b", boot_command(tree))) | set(
        re.findall(r"\bload mmc (\d+):", boot_command(tree)))
    assert devices == {str(TREES[tree]["env"]["mmc_dev"])}


def script_commands(script: str) -> set[str]:
    """Names of the commands a hush script runs, the commands of a single-quoted script given to
    setenv (altbootcmd) included."""
    names = set()
    for nested in re.findall(r"setenv \w+ '([^']*)'", script):
        names |= script_commands(nested)
    script = re.sub(r"'[^']*'", "''", re.sub(r'"(?:[^"\\]|\\.)*"', '""', script))
    for statement in re.split(r";|&&|\|\|", script):
        words = statement.split()
        while words and words[0] in ("then", "else", "fi", "do", "done"):
            words = words[1:]
        if words and words[0] == "if":
            names.add("if")
            words = words[1:]
        if words:
            names.add(words[0])
    return names


@pytest.mark.parametrize("tree", sorted(TREES))
def test_boot_scripts_only_run_commands_the_tree_builds(tree):
    options = merged_options(tree)
    used = script_commands(boot_command(tree)) | script_commands(options["CONFIG_PREBOOT"])
    assert used <= set(TREES[tree]["commands"]), sorted(used - set(TREES[tree]["commands"]))
    # The release fragment switches commands off: none the boot scripts need.
    for command in used:
        symbol = FACTS["command_symbols"][command]
        if symbol:
            assert options.get("CONFIG_" + symbol, "y") is not None, "%s needs CONFIG_%s" % (command, symbol)


def test_script_command_reader():
    assert script_commands("if test \"${a}\" = b; then setenv x 'run y; saveenv'; fi; load m 0 a f && bootm a; "
                           "reset") == {"if", "test", "setenv", "run", "saveenv", "load", "bootm", "reset"}


@pytest.mark.parametrize("tree", sorted(TREES))
def test_a_failed_boot_resets(tree):
    # bootcount only rises on a reset; a board left at the prompt (the watchdog is serviced
    # there) would never reach altbootcmd.
    bootcmd = boot_command(tree)
    assert re.search(r"bootm [^;]*; reset$", bootcmd), bootcmd


@pytest.mark.parametrize("tree", sorted(TREES))
def test_our_preboot_replaces_the_vendor_one_and_vendor_overrides_are_named(tree):
    options = merged_options(tree)
    assert options["CONFIG_USE_PREBOOT"] == "y"
    assert "altbootcmd" in options["CONFIG_PREBOOT"]
    assert options["CONFIG_PREBOOT"] != TREES[tree]["defaults"]["preboot"]
    # Boot modes in which vendor code replaces preboot (and with it altbootcmd) are documented
    # next to the A/B settings.
    comment = (LAYER / "recipes-bsp/u-boot/files/segway-bootcount.cfg").read_text().lower()
    for mode in TREES[tree]["defaults"]["board_sets_preboot"]:
        assert mode in comment, mode
    assert TREES[tree]["defaults"]["board_sets_bootcmd"] is False


def test_stm32mp_keyed_dtb_runs_between_keying_and_deploy():
    bb = import_bb()
    tasks = [n for n in statements(LAYER / UBOOT_APPENDS["u-boot-stm32mp"][0]) if isinstance(n, bb.parse.ast.AddTaskNode)]
    assert [(n.tasks, n.after, n.before) for n in tasks] == [
        ("segway_stm32mp_keyed_dtb", "do_segway_uboot_pubkey", "do_deploy")]


def stm32_keyed_dtb_run(tmp_path, device_trees, mode="sign"):
    bb = import_bb()
    task = python_task(LAYER / UBOOT_APPENDS["u-boot-stm32mp"][0], "do_segway_stm32mp_keyed_dtb")
    d = bb.data.init()
    for key, value in {"DISTROOVERRIDES": "poky:segway", "B": str(tmp_path), "SEGWAY_SIGN_MODE": mode,
                       "UBOOT_DEVICETREE": " ".join(device_trees)}.items():
        d.setVar(key, value)
    return task(d)


@pytest.mark.parametrize("machine", sorted(TREES["u-boot-stm32mp"]["machines"]))
def test_stm32mp_fip_gets_the_keyed_control_dtb(tmp_path, machine):
    facts = TREES["u-boot-stm32mp"]
    trees = facts["machines"][machine]["device_trees"]
    config = tmp_path / facts["machines"][machine]["defconfig"]
    config.mkdir()
    (config / "u-boot-segway-pubkey.dtb").write_bytes(b"keyed")
    fip_dtb = config / facts["control_dtb"].format(dt=trees[0])
    fip_dtb.write_bytes(b"plain")
    stm32_keyed_dtb_run(tmp_path, trees)
    assert fip_dtb.read_bytes() == b"keyed"
    # Deferred signing keys U-Boot from the certificate too: the FIP still gets the key.
    fip_dtb.write_bytes(b"plain")
    stm32_keyed_dtb_run(tmp_path, trees, mode="deferred")
    assert fip_dtb.read_bytes() == b"keyed"


def test_stm32mp_keyed_dtb_refuses_what_it_cannot_key(tmp_path):
    bb = import_bb()
    config = tmp_path / "stm32mp15_defconfig"
    config.mkdir()
    (config / "u-boot-segway-pubkey.dtb").write_bytes(b"keyed")
    with pytest.raises(bb.BBHandledException):
        stm32_keyed_dtb_run(tmp_path, ["stm32mp157f-dk2", "stm32mp157f-ev1"])
    with pytest.raises(bb.BBHandledException):
        stm32_keyed_dtb_run(tmp_path, ["stm32mp157f-dk2"])  # its u-boot-<dt>.dtb was never built


def fslc_datastore(tmp_path, **values):
    bb = import_bb()
    d = bb.data.init()
    base = {"DISTROOVERRIDES": "poky:segway", "B": str(tmp_path), "SEGWAY_SIGN_MODE": "sign",
            "SEGWAY_FIT_KEY_NAME": "segway-fit", "UBOOT_PROVIDES_BOOT_CONTAINER": "1"}
    for key, value in {**base, **values}.items():
        d.setVar(key, value)
    return d


def test_fslc_flash_bin_without_the_fit_key_is_refused(tmp_path):
    # u-boot-fslc's control DTB travels inside flash.bin (pinned: control_dtb), packed by binman.
    assert TREES["u-boot-fslc"]["control_dtb"] == "flash.bin"
    bb = import_bb()
    check = python_task(LAYER / UBOOT_APPENDS["u-boot-fslc"][0], "do_segway_fslc_check_flash_bin")
    image = tmp_path / TREES["u-boot-fslc"]["machines"]["imx8mm-lpddr4-evk"]["defconfig"] / "flash.bin"
    image.parent.mkdir()
    begin = b"\0\0\0\1"  # FDT_BEGIN_NODE
    for unkeyed in (begin + b"key-other\0", begin + b"other\0", b"comment: key-segway-fit\0"):
        image.write_bytes(b"\xd0\x0d\xfe\xed" + begin + b"signature\0" + unkeyed)
        with pytest.raises(bb.BBHandledException):
            check(fslc_datastore(tmp_path))
    for keyed in (b"key-segway-fit\0", b"segway-fit\0"):  # RSA and ECDSA key node names
        image.write_bytes(b"\xd0\x0d\xfe\xed" + begin + b"signature\0" + begin + keyed)
        check(fslc_datastore(tmp_path))
        check(fslc_datastore(tmp_path, SEGWAY_SIGN_MODE="deferred"))
    # Nothing to check without a boot container.
    image.write_bytes(b"unkeyed")
    check(fslc_datastore(tmp_path, UBOOT_PROVIDES_BOOT_CONTAINER="0"))
    with pytest.raises(bb.BBHandledException):
        check(fslc_datastore(tmp_path, SEGWAY_SIGN_MODE="deferred"))


@pytest.mark.parametrize("container,mode,added", [("1", "sign", True), ("0", "sign", False), ("1", "deferred", True)])
def test_fslc_repacks_flash_bin_after_keying(tmp_path, container, mode, added):
    anonymous = python_task(LAYER / UBOOT_APPENDS["u-boot-fslc"][0], "__anonymous")
    d = fslc_datastore(tmp_path, UBOOT_PROVIDES_BOOT_CONTAINER=container, SEGWAY_SIGN_MODE=mode)
    anonymous(d)
    tasks = d.getVar("__BBTASKS", False) or []
    assert ("do_segway_fslc_repack" in tasks) is added
    assert ("do_segway_fslc_check_flash_bin" in tasks) is added
    if added:
        assert "do_segway_uboot_pubkey" in d.getVarFlag("do_segway_fslc_repack", "deps")
        assert "do_segway_fslc_repack" in d.getVarFlag("do_segway_fslc_check_flash_bin", "deps")
        assert "do_segway_fslc_check_flash_bin" in d.getVarFlag("do_deploy", "deps")


@pytest.mark.parametrize("tree", sorted(TREES))
def test_release_writeable_list_reaches_the_macro_the_tree_reads(tmp_path, tree):
    """Compile against the header exactly as the release build force-includes it (the class's
    KCFLAGS) and read the static flags list under the name this tree's include/env_flags.h uses:
    an empty list would keep every stored variable, the A/B state included, out of U-Boot."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc (scripts/apt-packages.txt)")
    d = evaluate([LAYER / "classes/segway_uboot.bbclass"],
                 {"OVERRIDES": "segway", "UNPACKDIR": str(tmp_path), "SEGWAY_UBOOT_CONSOLE_LOCKED": "1",
                  "SEGWAY_LAYERDIR": str(LAYER)})
    kcflags = re.search(r"KCFLAGS='([^']*)'", d.getVar("EXTRA_OEMAKE")).group(1)
    shutil.copy(UBOOT_FILES / "segway-env-flags.h", tmp_path)
    macro = TREES[tree]["env_flags_macro"]
    probe = tmp_path / "probe.c"
    probe.write_text('#include <stdio.h>\n#ifndef %s\n#define %s ""\n#endif\n'
                     'int main(void) { puts(%s); return 0; }\n' % (macro, macro, macro))
    subprocess.run(["gcc", *kcflags.split(), "-o", str(tmp_path / "probe"), str(probe)], check=True)
    flags = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True, text=True).stdout.strip()
    access = dict(item.split(":") for item in flags.split(",") if item)
    for name in ("boot_slot", "upgrade_available", "bootcount"):
        assert "w" in access.get(name, "")[1:], "%s: %s not writeable from the stored environment" % (tree, name)
