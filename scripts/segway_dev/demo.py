"""The segway demo: the QEMU device's whole chain of trust, every signature made in a development
SoftHSM token: TF-A BL1 → BL2 → BL31 + OP-TEE → U-Boot → Linux with /dev/tee0, then tampering
refused by the stage that checks it.

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

from . import bootmedia, chain, debsrc, device, fip_attacks, fit_attacks, fitbuild, firmware

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


def refused(title: str, flash: bytes, fit: Path | bytes, stage: str) -> None:
    """Boot a tampered flash image or FIT and show the refusal of ``stage``."""
    name = title.lower().replace(" ", "-").replace("'", "")
    flash_path, fit_path = OUT / f"{name}.flash.bin", OUT / f"{name}.itb"
    flash_path.write_bytes(flash)
    if isinstance(fit, bytes):
        fit_path.write_bytes(fit)
    else:
        fit_path = fit
    print(f"- {title}: expect {stage} to refuse")
    result = chain.boot(flash_path, OUT / "boot" / name, fit=fit_path, timeout=600)
    for who, line in result.refusals():
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

    step("3. Firmware from Debian's sources for these keys, FIP and FIT signed in the token")
    print("  TF-A (ROTPK hash of segway-dev-fip), OP-TEE (TA key segway-dev-optee-ta), U-Boot (FIT key\n"
          "  segway-dev-fit in its own device tree); the first run builds them (a few minutes), later runs\n"
          "  take them from .cache/firmware.")
    dev = device.build_device(OUT / "device", OUT / "pki", lambda *a: run(*a, env=env), pin,
                              progress=lambda msg: print(f"  ... {msg}", flush=True))

    step("4. Boot: BL1 → BL2 → BL31 + OP-TEE → U-Boot → Linux, each stage checking the next")
    good = chain.boot(dev.flash, OUT / "boot" / "signed", fit=dev.fit, timeout=900)
    show(good, "BL1: v", "BL2: v", "BL31: v", "U-Boot 20", "Verifying Hash Integrity ... sha256,rsa",
         "Starting kernel", "optee: revision", device.TEE_MARKER, bootmedia.USERSPACE_MARKER)
    if not good.booted or device.TEE_MARKER not in good.uart0:
        raise DemoError(f"the signed chain did not boot: {good.summary()}")

    step("5. Tampering, refused by the stage that checks it")
    fip = dev.fip.read_bytes()
    bl1 = dev.tfa.bl1
    refused("One byte of BL2", chain.flash_image(bl1, fip_attacks.flip_entry_byte(fip, "tb-fw")), dev.fit, "BL1")
    refused("One byte of OP-TEE", chain.flash_image(bl1, fip_attacks.flip_entry_byte(fip, "tos-fw-extra1")),
            dev.fit, "BL2")
    refused("One byte of U-Boot", chain.flash_image(bl1, fip_attacks.flip_entry_byte(fip, "nt-fw")), dev.fit,
            "BL2")
    refused("One byte of the kernel in the FIT", dev.flash.read_bytes(),
            fit_attacks.flip_kernel_data(dev.fit.read_bytes()), "U-Boot")

    step("Done")
    print(f"""  Every stage verified the next with keys from the token, Linux reached userspace with
  /dev/tee0, and each tampered image was refused by the stage that checks it.
  Outputs in {OUT}:
    hsm/              the development token (PIN in hsm/user.pin)
    pki/              certificates, public keys, ROTPK hash, ceremony.json
    device/           flash.bin (BL1 + signed FIP), fip.bin, kernel.itb (signed FIT), u-boot-control.dtb
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
            fip_attacks.FipAttackError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
