"""The segway demo: a FIT signed in a development SoftHSM token, verified by Debian's U-Boot in QEMU.

Run with ``bash scripts/demo``. Everything goes under ``out/demo/`` (recreated on each run), the
development token included, so the demo is repeatable and touches nothing else.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import bootmedia, fit_attacks, fitbuild, qemu

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "out" / "demo"
SEGWAY_SIGN = REPO / ".venv" / "bin" / "segway-sign"
# The development ceremony's FIT key (conf/pki-dev.yaml): its label is also U-Boot's key-name-hint.
KEY_NAME = "segway-dev-fit"
KEY_URI = f"pkcs11:token=segway-dev;object={KEY_NAME}"


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
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "softhsm2-util": "softhsm2",
}


def preflight() -> None:
    """Fail at once, naming the fix, instead of after the ceremony."""
    if not SEGWAY_SIGN.is_file():
        raise DemoError(f"{SEGWAY_SIGN} is missing: run it as 'bash scripts/demo' (scripts/bootstrap installs it)")
    missing = [f"{tool} (apt: {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if not qemu.MACHINES["arm64"].bios.is_file():
        missing.append(f"{qemu.MACHINES['arm64'].bios} (apt: u-boot-qemu)")
    if missing:
        raise DemoError("missing: " + ", ".join(missing) + "; run scripts/bootstrap or install them")


def console_lines(log: str, *needles: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if any(n in line for n in needles)]


def demo() -> int:
    preflight()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    env = dict(os.environ, SEGWAY_DEV_HSM_DIR=str(OUT / "hsm"), SOURCE_DATE_EPOCH="1700000000")
    env.pop("SOFTHSM2_CONF", None)
    env.pop("SEGWAY_PKCS11_MODULE", None)
    pin = ["--pin-file", str(OUT / "hsm" / "user.pin")]

    step("1. Development HSM: a SoftHSM2 token under out/demo/hsm (no --module: segway-sign's default)")
    run("token", "init-dev", env=env)

    step("2. Key ceremony from conf/pki-dev.yaml: keys generated inside the token, certificates issued")
    run("pki", "init", REPO / "conf" / "pki-dev.yaml", "--out", OUT / "pki", *pin, env=env)

    step("3. Boot media: Debian's arm64 cloud kernel and busybox (cached in .cache/arm64)")
    media = bootmedia.fetch_boot_media()
    print(f"  kernel {media.kernel_version}: {media.kernel_image}")
    qemu_dtb = qemu.dump_control_dtb("arm64", OUT / "qemu-virt.dtb")
    print(f"  QEMU virt device tree (dumped with -bios u-boot.bin): {qemu_dtb}")
    unsigned = fitbuild.build_kernel_fit(OUT / "kernel-unsigned.itb", qemu_dtb, media=media,
                                         key_name_hint=KEY_NAME, source_date_epoch=1700000000)
    print(f"  unsigned FIT (kernel + dtb + initramfs) built with Debian's mkimage: {unsigned}")

    step("4. Sign the FIT through PKCS#11 (only digests go to the token)")
    signed = OUT / "kernel-signed.itb"
    run("fit", "sign", "--key", KEY_URI, "--in", unsigned, "--out", signed, *pin, env=env)

    step("5. Put the public key into U-Boot's control DTB (required for configurations)")
    control = OUT / "u-boot-control.dtb"
    run("fit", "add-pubkey", "--key", KEY_URI, "--dtb", qemu_dtb, "--out", control,
        "--key-name-hint", KEY_NAME, "--required", "conf", *pin, env=env)
    run("fit", "verify", "--dtb", control, "--in", signed, env=env)

    step("6. Boot Debian's U-Boot (qemu_arm64) in qemu-system-aarch64 with the signed FIT")
    good = qemu.boot_fit("arm64", control, signed, log_path=OUT / "boot-signed.log")
    for line in console_lines(good.log, "Verifying Hash Integrity", "Starting kernel", bootmedia.USERSPACE_MARKER):
        print(f"  | {line}")
    if not (good.verified and good.userspace):
        print(good.summary())
        return 1

    step("7. Tamper with one kernel byte: U-Boot must refuse the FIT")
    tampered = OUT / "kernel-tampered.itb"
    tampered.write_bytes(fit_attacks.flip_kernel_data(signed.read_bytes()))
    bad = qemu.boot_fit("arm64", control, tampered, log_path=OUT / "boot-tampered.log", timeout=120)
    for line in console_lines(bad.log, "Verifying Hash Integrity", "Bad", "ERROR", "Failed", "error!"):
        print(f"  | {line}")
    if not bad.refused or bad.userspace:
        print(bad.summary())
        return 1

    step("Done")
    print(f"""  U-Boot verified the signature (sha256,rsa2048:{KEY_NAME}+), Linux reached userspace
  ({bootmedia.USERSPACE_MARKER}), and the tampered FIT was refused.
  Outputs in {OUT}:
    hsm/                  the development token (PIN in hsm/user.pin)
    pki/                  certificates, public keys, U-Boot key node, fuse values, ceremony.json
    kernel-signed.itb     the signed FIT          u-boot-control.dtb  control DTB with the key
    boot-signed.log       U-Boot + Linux console  boot-tampered.log   the refusal""")
    return 0


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="scripts/demo",
        description="Sign a Linux FIT in a development SoftHSM token and boot it with Debian's U-Boot "
                    f"in QEMU, then show a tampered FIT refused. Recreates {OUT.relative_to(REPO)}/.",
    ).parse_args(argv)
    try:
        return demo()
    except (DemoError, OSError, qemu.QemuError, bootmedia.BootMediaError, fitbuild.FitBuildError,
            fit_attacks.FitAttackError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
