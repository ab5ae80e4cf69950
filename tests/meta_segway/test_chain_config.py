"""meta-segway's qemuarm64-secureboot firmware is configured as the QEMU harness builds and proves it
(scripts/segway_dev/firmware.py): TF-A's make options, OP-TEE's options and U-Boot's configuration
fragments are read from the layer's appends and compared with TFA_OPTIONS, OPTEE_OPTIONS and
uboot_fragments(), so neither side can change alone. What one side keeps and the other cannot is
listed below with the reason."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from segway_dev import chain, firmware

from .layer import LAYER, evaluate

MACHINE = "qemuarm64-secureboot"
OVERRIDES = "aarch64:qemuall:qemuarm64:%s:segway" % MACHINE
TFA_APPEND = LAYER / "dynamic-layers/meta-arm/recipes-bsp/trusted-firmware-a/trusted-firmware-a_%.bbappend"
FIP_CLASS = LAYER / "classes/segway_fip.bbclass"
OPTEE_APPEND = LAYER / "recipes-security/optee/optee-os_%.bbappend"
QEMU_INC = LAYER / "conf/distro/include/segway-qemu.inc"
UBOOT_APPEND = LAYER / "recipes-bsp/u-boot/u-boot_%.bbappend"
UBOOT_FILES = LAYER / "recipes-bsp/u-boot/files"
RUNTIME_DTSI = LAYER / "recipes-bsp/segway-qemu-dtb/files/segway-qemu-runtime-qemuarm64-secureboot.dtsi"

# Harness options the layer does not set, and why.
TFA_HARNESS_ONLY = {
    # The harness builds Debian's source tarball, where TF-A would ask `git describe` of whatever
    # repository the cache sits in; the layer builds meta-arm's git checkout, whose tag is right.
    "BUILD_STRING": "version banner of a tarball build",
}
OPTEE_HARNESS_ONLY = {
    # Same reason as BUILD_STRING: the layer's OP-TEE is a git checkout and reports its own commit.
    "CFG_OS_REV_REPORTS_GIT_SHA1": "revision of a tarball build",
    "TEE_IMPL_VERSION": "version banner of a tarball build",
}
# Options meta-arm's recipes set for the machine (meta-arm at the kas pin: optee.inc, optee-os.inc),
# with the harness's value they give.
OPTEE_FROM_META_ARM = {
    "PLATFORM": "vexpress-qemu_armv8a",  # OPTEEMACHINE:aarch64:qemuall
    "CFG_ARM64_core": "y",  # CFG_${OPTEE_CORE}_core=y
    "CFG_USER_TA_TARGETS": "ta_arm64",  # ta-targets=ta_${OPTEE_ARCH}
}
# U-Boot settings of the harness's own fragment (uboot-qemu-chain.cfg) the layer's QEMU boot differs
# in, and why.
UBOOT_HARNESS_ONLY = {
    # The harness preloads the signed FIT into RAM; the layer loads the active A/B slot's FIT from
    # the virtio disk (segway-qemu-boot.cfg). Both boot only through bootm of a signed configuration.
    "CONFIG_BOOTCOMMAND": "boot command of the A/B disk layout",
    # The layer keeps U-Boot's environment in QEMU's flash for A/B boot counting (segway-bootcount.cfg);
    # in the release flavour only the A/B variables are writeable there (segway-console-locked.cfg).
    "CONFIG_ENV_IS_IN_FLASH": "A/B boot counting needs a stored environment",
    "CONFIG_ENV_IS_NOWHERE": "A/B boot counting needs a stored environment",
}


def make_options(value: str) -> dict[str, str]:
    options = {}
    for word in value.split():
        if "=" in word:
            key, _, val = word.partition("=")
            options[key] = val
    return options


def cfg_settings(path: Path) -> dict[str, str]:
    """CONFIG_X=value and '# CONFIG_X is not set' (as 'n') of a Kconfig fragment."""
    settings = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, _, val = line.partition("=")
            settings[key] = val
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            settings[line.split()[1]] = "n"
    return settings


def tfa_datastore(overrides: str = OVERRIDES):
    return evaluate([FIP_CLASS, TFA_APPEND], {"MACHINE": MACHINE, "OVERRIDES": overrides,
                                              "MACHINEOVERRIDES": "qemuall:qemuarm64:" + MACHINE,
                                              "WORKDIR": "/w", "EXTRA_OEMAKE": "",
                                              "TFA_PLATFORM": "invalid", "TFA_SPD": "", "TFA_MBEDTLS": "0"})


def test_tfa_options_match_the_harness():
    d = tfa_datastore()
    layer = make_options(d.getVar("EXTRA_OEMAKE"))
    # The recipe turns these variables into PLAT=, SPD= and MBEDTLS_DIR= (trusted-firmware-a.inc).
    layer["PLAT"] = d.getVar("TFA_PLATFORM")
    layer["SPD"] = d.getVar("TFA_SPD")
    assert d.getVar("TFA_MBEDTLS") == "1", "TBB needs mbedTLS"
    harness = {k: v for k, v in firmware.TFA_OPTIONS.items() if k not in TFA_HARNESS_ONLY}
    assert set(TFA_HARNESS_ONLY) <= set(firmware.TFA_OPTIONS), "a listed exception is gone from the harness"
    assert {k: layer.get(k) for k in harness} == harness
    # Nothing beyond the harness's options, except the ROT key files BL1 and BL2 are built with.
    extra = set(layer) - set(firmware.TFA_OPTIONS)
    assert extra == {"ROT_KEY", "ROTPK_HASH"}, extra
    assert layer["ROTPK_HASH"] == d.getVar("SEGWAY_FIP_ROTPK_HASH") == "/w/segway-fip-rotpk/rotpk_sha256.bin"
    assert layer["ROT_KEY"] == "/w/segway-fip-rotpk/rot_pub.pem"


def test_tfa_settings_stay_off_other_machines_and_distros():
    for overrides in ("arm:qemuall:qemuarm:qemuarm-secureboot:segway", "aarch64:qemuall:qemuarm64:%s" % MACHINE):
        d = tfa_datastore(overrides)
        assert d.getVar("EXTRA_OEMAKE").split() == [], overrides
        assert d.getVar("TFA_MBEDTLS") == "0", overrides


def test_tfa_rotpk_comes_from_the_fip_certificate(tmp_path):
    """segway_fip_rotpk writes what the ceremony writes to fuses/<prefix>-fip.rotpk_hash.bin and what the
    harness builds with: SHA-256 of the ROT key's DER SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .layer import class_functions

    key, cert = tmp_path / "fip.key", tmp_path / "fip.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-subj", "/CN=fip", "-days", "1"], check=True, capture_output=True)
    namespace = class_functions("segway_cert.bbclass", "segway_fip.bbclass")
    d = evaluate([FIP_CLASS], {"WORKDIR": str(tmp_path / "w"), "SEGWAY_FIP_ROT_CERT": str(cert),
                               "PATH": "/usr/bin:/bin"})
    d.setVar("SEGWAY_CERT_FP_SEGWAY_FIP_ROT_CERT", namespace["segway_cert_fingerprint"](d, "SEGWAY_FIP_ROT_CERT"))
    digest = Path(namespace["segway_fip_rotpk"](d))
    spki = x509.load_pem_x509_certificate(cert.read_bytes()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert digest.read_bytes() == firmware.rotpk_hash(spki)
    pubkey = Path(d.getVar("SEGWAY_FIP_ROT_PUBKEY"))
    assert pubkey.stat().st_mtime < digest.stat().st_mtime  # else TF-A's makefile regenerates both


def test_optee_options_match_the_harness():
    d = evaluate([OPTEE_APPEND], {"MACHINE": MACHINE, "OVERRIDES": OVERRIDES, "EXTRA_OEMAKE": ""})
    layer = make_options(d.getVar("EXTRA_OEMAKE"))
    layer.update(OPTEE_FROM_META_ARM)
    assert set(OPTEE_HARNESS_ONLY) <= set(firmware.OPTEE_OPTIONS), "a listed exception is gone from the harness"
    harness = {k: v for k, v in firmware.OPTEE_OPTIONS.items() if k not in OPTEE_HARNESS_ONLY}
    assert {k: layer.get(k) for k in harness} == harness
    # Our own TA key, never upstream's default (segway_optee_ta.bbclass writes the file).
    assert layer["TA_PUBLIC_KEY"] == "${SEGWAY_OPTEE_TA_PUBKEY}"
    other = evaluate([OPTEE_APPEND], {"OVERRIDES": "arm:qemuall:qemuarm:qemuarm-secureboot:segway", "EXTRA_OEMAKE": ""})
    assert "CFG_ARM_GICV3" not in make_options(other.getVar("EXTRA_OEMAKE"))


def test_uboot_fragments_match_the_harness():
    qemu = evaluate([QEMU_INC], {"MACHINE": MACHINE, "OVERRIDES": OVERRIDES})
    d = evaluate([QEMU_INC, UBOOT_APPEND], {"MACHINE": MACHINE, "OVERRIDES": OVERRIDES, "SRC_URI": "",
                                            "DEPLOY_DIR_IMAGE": "/deploy"})
    layer_files = {word[len("file://"):] for word in d.getVar("SRC_URI").split() if word.startswith("file://")}
    assert {"segway-qemu-boot.cfg", "segway-qemu-chain.cfg"} <= layer_files
    assert d.getVar("SEGWAY_UBOOT_CONTROL_DTB") == "/deploy/" + qemu.getVar("SEGWAY_QEMU_DTB")
    # The harness uses the layer's own fragments (segway_uboot.bbclass adds them; the locked console
    # in the release flavour, which is what the harness proves).
    harness_files = firmware.uboot_fragments()
    for path in harness_files[:-1]:
        assert path.parent == UBOOT_FILES, path
    # Its own fragment: every setting is the layer's QEMU setting, or listed with its reason.
    assert harness_files[-1] == firmware.HARNESS_UBOOT_FRAGMENT
    layer_cfg = {}
    for name in ("segway-fit-verify.cfg", "segway-bootcount.cfg", "segway-qemu-boot.cfg", "segway-qemu-chain.cfg"):
        layer_cfg.update(cfg_settings(UBOOT_FILES / name))
    harness_cfg = cfg_settings(firmware.HARNESS_UBOOT_FRAGMENT)
    assert set(UBOOT_HARNESS_ONLY) <= set(harness_cfg), "a listed exception is gone from the harness"
    for key, value in harness_cfg.items():
        if key not in UBOOT_HARNESS_ONLY:
            assert layer_cfg.get(key, "n" if value == "n" else None) == value, key
    assert layer_cfg["CONFIG_OF_SEPARATE"] == "y" and layer_cfg["CONFIG_OF_BOARD"] == "n"


def test_runqemu_boots_the_signed_flash_with_gicv3_and_no_dtb():
    d = evaluate([QEMU_INC], {"MACHINE": MACHINE, "OVERRIDES": OVERRIDES, "QB_MACHINE": "-machine virt,secure=on",
                              "QB_OPT_APPEND": "-no-acpi", "EXTRA_IMAGEDEPENDS": ""})
    machine = d.getVar("QB_MACHINE").split()[1].split(",")
    harness = chain.MACHINE_ARGS[1].split(",")
    assert "gic-version=3" in machine and "gic-version=3" in harness
    assert "-dtb" not in d.getVar("QB_OPT_APPEND")
    assert "segway-qemu-signed-boot" in d.getVar("EXTRA_IMAGEDEPENDS").split()
    assert int(d.getVar("SEGWAY_FIT_KERNEL_LOAD"), 0) == chain.KERNEL_LOAD


def _tree(dts_or_dtb: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / (dts_or_dtb.name + ".sorted.dts")
    fmt = "dtb" if dts_or_dtb.suffix == ".dtb" else "dts"
    subprocess.run(["dtc", "-q", "-s", "-I", fmt, "-O", "dts", "-o", out, dts_or_dtb], check=True)
    return out.read_text().splitlines()


@pytest.mark.slow
def test_runtime_tree_is_the_one_the_harness_captured(tmp_path):
    """QEMU's tree plus SEGWAY_QEMU_RUNTIME_DTSI (as segway-qemu-dtb builds it) equals the tree TF-A
    and OP-TEE hand over in the harness's chain, read out of guest memory (cached by device.py)."""
    from segway_dev import cache

    captured = sorted(cache.cache_dir("firmware").glob("runtime-*.dtb"), key=lambda p: p.stat().st_mtime)
    if not captured:
        pytest.skip("no run-time tree captured yet (tests/dev/test_chain.py boots the chain once)")
    dumped = tmp_path / "qemu.dtb"
    bios = tmp_path / "bios.bin"
    bios.write_bytes(bytes(65536))
    subprocess.run([chain.QEMU, "-machine", chain.MACHINE_ARGS[1] + ",dumpdtb=%s" % dumped, *chain.MACHINE_ARGS[2:],
                    "-bios", bios, "-display", "none", "-nic", "none", "-serial", "null", "-serial", "null",
                    "-monitor", "none"], check=True, capture_output=True, timeout=120)
    for node in ("/chosen", "/secure-chosen"):  # as segway-qemu-dtb's do_compile
        for prop in ("kaslr-seed", "rng-seed"):
            subprocess.run(["fdtput", "-d", dumped, node, prop], check=False, capture_output=True)
    dts = tmp_path / "runtime.dts"
    subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", "-o", dts, dumped], check=True)
    cpus = subprocess.run(["fdtget", "-l", dumped, "/cpus"], check=True, capture_output=True, text=True).stdout.split()
    text = dts.read_text() + RUNTIME_DTSI.read_text()
    text += "".join('&{/cpus/%s} {\n\tenable-method = "psci";\n};\n' % c for c in cpus if c.startswith("cpu@"))
    dts.write_text(text)
    harness = tmp_path / "captured.dtb"
    harness.write_bytes(captured[-1].read_bytes())
    for node in ("/chosen", "/secure-chosen"):
        for prop in ("kaslr-seed", "rng-seed"):
            subprocess.run(["fdtput", "-d", harness, node, prop], check=False, capture_output=True)
    built = tmp_path / "built.dtb"
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", built, dts], check=True)
    assert _tree(built, tmp_path) == _tree(harness, tmp_path)
