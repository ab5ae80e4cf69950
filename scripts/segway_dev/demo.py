"""The segway demo: the QEMU device's whole chain of trust, every signature made in a development
SoftHSM token: TF-A BL1 → BL2 → BL31 + OP-TEE → U-Boot → Linux with /dev/tee0, OP-TEE loading a
user TA re-signed in the token and refusing it as Debian ships it, then tampering refused by the
stage that checks it.

Run with ``bash scripts/demo``. Everything goes under ``out/demo/`` (recreated on each run), the
development token included, so the demo is repeatable and touches nothing else. The firmware is
built from Debian's source packages on the first run and cached (``.cache/firmware``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import (bootmedia, chain, debsrc, device, fip_attacks, fit_attacks, fitbuild, firmware, guest_packages,
               ta_proof, verity_root)
from segway_sign.formats.optee import ta as ta_format

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "out" / "demo"
SEGWAY_SIGN = REPO / ".venv" / "bin" / "segway-sign"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: str, env: dict | None = None) -> str:
    """Run a segway-sign command as a user would, echoing it."""
    shown = " ".join(shlex.quote(str(a)) for a in args)
    print(f"$ segway-sign {shown}", flush=True)
    res = subprocess.run([str(SEGWAY_SIGN), *map(str, args)], env=env, capture_output=True, text=True)
    for line in (res.stdout + res.stderr).strip().splitlines():
        print(f"  {line}")
    if res.returncode != 0:
        raise DemoError(f"segway-sign {args[0]} {args[1] if len(args) > 1 else ''} failed (output above)")
    return res.stdout


class DemoError(RuntimeError):
    """Something the demo needs is missing or failed; one line says what."""


# What the demo runs, and the Debian package (scripts/apt-packages.txt) that brings it.
REQUIRED_TOOLS = {
    "qemu-system-aarch64": "qemu-system-arm",
    "mkimage": "u-boot-tools",
    "fiptool": "arm-trusted-firmware-tools",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-source": "dpkg-dev",
    "make": "make",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "softhsm2-util": "softhsm2",
}


def preflight() -> None:
    """Fail at once, naming the fix, instead of after the ceremony."""
    if not SEGWAY_SIGN.is_file():
        raise DemoError(f"{SEGWAY_SIGN} is missing: run it as 'bash scripts/demo' (scripts/bootstrap installs it)")
    missing = [f"{tool} (apt: {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise DemoError("missing: " + ", ".join(missing) + "; run scripts/bootstrap or install them")


def console_lines(log: str, *needles: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if any(n in line for n in needles)]


def show(result: chain.ChainResult, *needles: str) -> None:
    for line in console_lines(result.uart0, *needles):
        print(f"  | {line}")
    for line in console_lines(result.uart1, "OP-TEE version", "switching to normal world"):
        print(f"  | (OP-TEE, UART1) {line}")


def refused(title: str, flash: bytes, fit: Path | bytes, stage: str, extra_args: list[str]) -> None:
    """Boot a tampered flash image or FIT and show the refusal of ``stage``."""
    name = title.lower().replace(" ", "-").replace("'", "")
    flash_path, fit_path = OUT / f"{name}.flash.bin", OUT / f"{name}.itb"
    flash_path.write_bytes(flash)
    if isinstance(fit, bytes):
        fit_path.write_bytes(fit)
    else:
        fit_path = fit
    print(f"- {title}: expect {stage} to refuse")
    result = chain.boot(flash_path, OUT / "boot" / name, fit=fit_path, timeout=600, extra_args=extra_args)
    for who, line in dict.fromkeys(result.refusals()):  # once each: dm-verity repeats its line per read
        print(f"  | ({who}) {line}")
    if result.refused_by() != stage or "userspace" in result.reached():
        raise DemoError(f"{title}: not refused by {stage} ({result.summary()})")


def demo() -> int:
    preflight()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    env = dict(os.environ, SEGWAY_DEV_HSM_DIR=str(OUT / "hsm"), SOURCE_DATE_EPOCH="1700000000")
    for var in ("SOFTHSM2_CONF", "SEGWAY_PKCS11_MODULE", "SEGWAY_PIN_FILE"):
        env.pop(var, None)
    pin = ["--pin-file", str(OUT / "hsm" / "user.pin")]

    step("1. Development HSM: a SoftHSM2 token under out/demo/hsm (no --module: segway-sign's default)")
    run("token", "init-dev", env=env)

    step("2. Key ceremony from conf/pki-dev.yaml: keys generated inside the token, certificates issued")
    run("pki", "init", REPO / "conf" / "pki-dev.yaml", "--out", OUT / "pki", *pin, env=env)

    step("3. A user TA for OP-TEE: xtest's crypt TA as Debian ships it (upstream's default key), re-signed in the token")
    guest = guest_packages.fetch(guest_packages.OPTEE_CLIENT)
    shipped = guest.path(f"{guest_packages.XTEST_TA_DIR}/{ta_proof.CRYPT_TA_UUID}.ta").read_bytes()
    parsed = ta_format.parse(shipped)
    elf = OUT / f"{ta_proof.CRYPT_TA_UUID}.stripped.elf"
    elf.write_bytes(parsed.payload)
    ours = OUT / f"{ta_proof.CRYPT_TA_UUID}.ta"
    run("ta", "sign", "--key", device.key_uri(device.TA_KEY), "--in", elf, "--ta-version", str(parsed.ta_version),
        "--out", ours, *pin, env=env)
    tas = {"debian-default-key": shipped, "ours": ours.read_bytes()}

    step("4. Firmware from Debian's sources for these keys, FIP and FIT signed in the token")
    print("  TF-A (ROTPK hash of segway-dev-fip), OP-TEE (TA key segway-dev-optee-ta), U-Boot (FIT key\n"
          "  segway-dev-fit in its own device tree); the first run builds them (a few minutes), later runs\n"
          "  take them from .cache/firmware.")
    dev = device.build_device(OUT / "device", OUT / "pki", lambda *a: run(*a, env=env), pin,
                              init_body=ta_proof.init_body(list(tas)), extra_files=ta_proof.initramfs_files(tas, guest),
                              verity=True,
                              progress=lambda msg: print(f"  ... {msg}", flush=True))

    step("5. Boot: BL1 → BL2 → BL31 + OP-TEE → U-Boot → Linux on the dm-verity root, each stage checking the next")
    good = chain.boot(dev.flash, OUT / "boot" / "signed", fit=dev.fit, timeout=900, extra_args=dev.qemu_args())
    show(good, "BL1: v", "BL2: v", "BL31: v", "U-Boot 20", "Verifying Hash Integrity ... sha256,rsa",
         "Starting kernel", "optee: revision", "verity: root hash", verity_root.ROOT_MARKER, "/dev/tee0 present",
         bootmedia.USERSPACE_MARKER)
    if verity_root.ROOT_MARKER not in good.uart0:
        raise DemoError(f"Linux did not run from the verity root: {good.summary()}")
    if not good.booted:
        raise DemoError(f"the signed chain did not boot: {good.summary()}")
    runs = ta_proof.case_runs(good.uart0)
    print("  OP-TEE and the user TA (tee-supplicant, xtest -t regression 1004 with the crypt TA):")
    debian, mine = runs.get("debian-default-key"), runs.get("ours")
    for refusal in ta_proof.optee_refusals(good.uart1)[:1]:
        for line in refusal.lines:
            print(f"  | (OP-TEE, UART1) {line}")
    print(f"  - as Debian ships it (upstream's default key): xtest exit {debian.rc if debian else '?'}"
          f"{', TEEC_ERROR_SECURITY' if debian and debian.security_error else ''}")
    print(f"  - signed in the token: xtest exit {mine.rc if mine else '?'}{' (regression_1004 OK)' if mine and mine.passed else ''}")
    if not (debian and debian.security_error and not debian.passed and mine and mine.passed):
        raise DemoError("OP-TEE did not load only the TA signed in the token (see boot/signed/uart*.log)")

    step("6. Tampering, refused by the stage that checks it")
    fip = dev.fip.read_bytes()
    bl1 = dev.tfa.bl1
    disk = dev.qemu_args()
    refused("One byte of BL2", chain.flash_image(bl1, fip_attacks.flip_entry_byte(fip, "tb-fw")), dev.fit, "BL1",
            disk)
    refused("One byte of OP-TEE", chain.flash_image(bl1, fip_attacks.flip_entry_byte(fip, "tos-fw-extra1")),
            dev.fit, "BL2", disk)
    refused("One byte of U-Boot", chain.flash_image(bl1, fip_attacks.flip_entry_byte(fip, "nt-fw")), dev.fit,
            "BL2", disk)
    refused("One byte of the kernel in the FIT", dev.flash.read_bytes(),
            fit_attacks.flip_kernel_data(dev.fit.read_bytes()), "U-Boot", disk)
    flipped = OUT / "rootfs-flipped.verity.img"
    flipped.write_bytes(verity_root.flip_data_block(dev.disk.read_bytes(), dev.payload_block))
    refused("One byte of a root file system block", dev.flash.read_bytes(), dev.fit, "Linux", dev.qemu_args(flipped))

    step("Done")
    print(f"""  Every stage verified the next with keys from the token, Linux reached userspace on the
  dm-verity root with /dev/tee0, OP-TEE ran only the TA signed in the token, and each tampered
  image was refused by the stage that checks it.
  Outputs in {OUT}:
    hsm/              the development token (PIN in hsm/user.pin)
    pki/              certificates, public keys, ROTPK hash, ceremony.json
    device/           flash.bin (BL1 + signed FIP), fip.bin, kernel.itb (signed FIT), u-boot-control.dtb,
                      rootfs-verity/ (the root with its hash tree, root hash and its signature)
    boot/*/uart0.log  TF-A, U-Boot and Linux console; uart1.log: OP-TEE""")
    return 0


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="scripts/demo",
        description="Sign the QEMU device's firmware, FIP and FIT in a development SoftHSM token, boot "
                    "TF-A, OP-TEE, U-Boot and Linux in QEMU, then show tampering refused by each stage. "
                    f"Recreates {OUT.relative_to(REPO)}/.",
    ).parse_args(argv)
    try:
        return demo()
    except (DemoError, OSError, chain.ChainError, firmware.FirmwareError, debsrc.SourceError,
            bootmedia.BootMediaError, fitbuild.FitBuildError, fit_attacks.FitAttackError,
            fip_attacks.FipAttackError, guest_packages.GuestPackageError, ta_format.InputError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
