"""Command line for the QEMU/U-Boot proof harness (``PYTHONPATH=scripts python -m segway_dev``).

  dump-dtb ARCH OUT                    QEMU's device tree, dumped with the boot options
  check ARCH CONTROL_DTB FIT [CONF]    does U-Boot accept FIT#CONF? (bootm start, nothing runs)
  boot CONTROL_DTB FIT [CONF]          boot an arm64 kernel FIT to the userspace marker
  attacks FIT OUTDIR                   write every tampered variant of a signed FIT
  kernel-fit OUT FDT [--module M ...]  unsigned arm64 FIT: Debian kernel + FDT + busybox initramfs
  guest WORK [COMMAND ...]             boot the runtime device (systemd, segway-kms) with its
                                       token, disks and TPM under WORK; run each COMMAND in it as
                                       root over SSH, or stay up until Ctrl-C
  firmware-reproducible                build TF-A, OP-TEE and U-Boot a second time from scratch in
                                       another directory and compare every image byte for byte

check/boot exit 0 only if U-Boot accepted (and, for boot, userspace printed the marker);
firmware-reproducible only if every image is identical (minutes: three firmware builds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import bootmedia, chain, debsrc, firmware, fit_attacks, fitbuild, guest, guest_packages, guest_system, qemu
from .host_tpm import HostTpmError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segway_dev", description="QEMU + Debian U-Boot FIT proof harness")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump-dtb", help="dump QEMU's device tree with the boot options")
    d.add_argument("arch", choices=sorted(qemu.MACHINES))
    d.add_argument("out", type=Path)
    c = sub.add_parser("check", help="ask U-Boot whether it accepts FIT#CONF")
    c.add_argument("arch", choices=sorted(qemu.MACHINES))
    c.add_argument("control_dtb", type=Path)
    c.add_argument("fit", type=Path)
    c.add_argument("conf", nargs="?", default="conf-1")
    b = sub.add_parser("boot", help="boot an arm64 kernel FIT to userspace")
    b.add_argument("control_dtb", type=Path)
    b.add_argument("fit", type=Path)
    b.add_argument("conf", nargs="?", default="conf-1")
    b.add_argument("--bootargs", default=qemu.DEFAULT_BOOTARGS)
    a = sub.add_parser("attacks", help="write the tampered variants of a signed FIT")
    a.add_argument("fit", type=Path)
    a.add_argument("outdir", type=Path)
    k = sub.add_parser("kernel-fit", help="build an unsigned arm64 kernel FIT from Debian's packages")
    k.add_argument("out", type=Path)
    k.add_argument("fdt", type=Path, help="QEMU's tree from dump-dtb arm64")
    k.add_argument("--module", action="append", default=[], help="kernel module for the initramfs")
    k.add_argument("--key-name-hint", default=fitbuild.DEFAULT_KEY_NAME)
    g = sub.add_parser("guest", help="boot the runtime device and run commands in it")
    g.add_argument("work", type=Path, help="directory for its token, images, data disk, TPM and logs")
    g.add_argument("commands", nargs="*", help="shell commands to run as root in the guest")
    sub.add_parser("firmware-reproducible",
                   help="build the firmware a second time from scratch elsewhere and compare the images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "dump-dtb":
            print(qemu.dump_control_dtb(args.arch, args.out))
            return 0
        if args.cmd == "check":
            result = qemu.check_fit(args.arch, args.control_dtb, args.fit, args.conf)
            print(result.summary())
            return 0 if result.accepted else 1
        if args.cmd == "boot":
            result = qemu.boot_fit("arm64", args.control_dtb, args.fit, args.conf, bootargs=args.bootargs)
            print(result.summary())
            return 0 if result.accepted and result.userspace else 1
        if args.cmd == "attacks":
            blob = args.fit.read_bytes()
            args.outdir.mkdir(parents=True, exist_ok=True)
            for attack in fit_attacks.ATTACKS:
                out = args.outdir / f"{attack.name}.itb"
                out.write_bytes(attack.apply(blob))
                print(f"{out}\tbootm #{attack.conf}\t{attack.description}")
            return 0
        if args.cmd == "kernel-fit":
            print(fitbuild.build_kernel_fit(args.out, args.fdt, modules=args.module,
                                            key_name_hint=args.key_name_hint))
            return 0
        if args.cmd == "guest":
            return guest.session(args.work, args.commands, progress=lambda msg: print(f"... {msg}", flush=True))
        if args.cmd == "firmware-reproducible":
            results = firmware.check_reproducible(progress=lambda msg: print(f"... {msg}", flush=True))
            for comparison in results:
                print(comparison.summary())
            return 0 if all(c.identical for c in results) else 1
    except (OSError, qemu.QemuError, fit_attacks.FitAttackError, fitbuild.FitBuildError,
            bootmedia.BootMediaError, firmware.FirmwareError, debsrc.SourceError, chain.ChainError,
            guest.GuestError, guest_system.GuestSystemError, guest_packages.GuestPackageError, HostTpmError) as exc:
        print(f"segway_dev: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
