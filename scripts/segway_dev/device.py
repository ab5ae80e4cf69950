"""The signed QEMU device: firmware built for the ceremony's keys, FIP and FIT signed in the token.

``build_device`` takes a development token after ``pki init`` (its output directory holds the
public keys) and a ``sign`` function that runs ``segway-sign`` (the demo echoes its commands, the
tests run them quietly). The firmware trusts the token's keys (ROTPK hash, TA public key); every
signature is made by segway-sign and checked by ``segway-sign fip verify``/``fit verify`` before
QEMU checks it again, stage by stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import bootmedia, cache, chain, firmware, fitbuild, verity_root

PLAN = "segway-dev"
TOKEN = "pkcs11:token=segway-dev"
FIT_KEY = f"{PLAN}-fit"  # also U-Boot's key-name-hint
# The FIP's keys, by segway-sign fip sign option (conf/pki-dev.yaml).
FIP_KEYS = {
    "--rot-key": f"{PLAN}-fip",
    "--trusted-world-key": f"{PLAN}-fip-trusted-world",
    "--non-trusted-world-key": f"{PLAN}-fip-non-trusted-world",
    "--soc-fw-key": f"{PLAN}-fip-soc-fw",
    "--tos-fw-key": f"{PLAN}-fip-tos-fw",
    "--nt-fw-key": f"{PLAN}-fip-nt-fw",
}
TA_KEY = f"{PLAN}-optee-ta"
BOOTARGS = "console=ttyAMA0 rdinit=/init panic=-1"
TEE_MARKER = "SEGWAY-TEE-OK"
# /init: OP-TEE's driver binds and /dev/tee0 appears (then the verity root, or the marker).
TEE_BODY = (
    "modprobe tee && modprobe optee && for i in 1 2 3 4 5 6 7 8 9 10; do test -c /dev/tee0 && break; "
    f"sleep 1; done; test -c /dev/tee0 && echo {TEE_MARKER}\n"
)
VERITY_KEY = f"{PLAN}-verity"

Sign = Callable[..., str]


def key_uri(label: str) -> str:
    return f"{TOKEN};object={label}"


@dataclasses.dataclass(frozen=True)
class Device:
    flash: Path  # BL1 + signed FIP: QEMU's -bios
    fip: Path
    fit: Path  # signed kernel FIT for U-Boot
    control_dtb: Path  # U-Boot's control tree with the FIT key (inside BL33)
    runtime_dtb: Path  # the tree TF-A and OP-TEE hand over
    tfa: firmware.TfaBuild
    optee: firmware.OpteeBuild
    uboot: Path  # u-boot.bin (BL33) with the control tree
    disk: Path | None = None  # the signed verity root (data + hash tree), if any
    payload_block: int | None = None  # a data block of the root that a test may flip

    def qemu_args(self, disk: Path | None = None) -> list[str]:
        """QEMU options for the device's disk (or ``disk`` instead, e.g. a tampered copy)."""
        disk = disk or self.disk
        return verity_root.disk_args(disk) if disk else []


def qemu_dtb(out: Path, bios: Path) -> bytes:
    machine = chain.MACHINE_ARGS[1]
    argv = [chain.QEMU, "-machine", f"{machine},dumpdtb={out}", *chain.MACHINE_ARGS[2:],
            "-bios", str(bios), "-display", "none", "-nic", "none"]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if proc.returncode != 0 or not out.is_file():
        raise chain.ChainError(f"QEMU could not dump its device tree: {proc.stderr.strip()[-200:]}")
    return out.read_bytes()


def sign_fip(sign: Sign, out: Path, tfa: firmware.TfaBuild, optee: firmware.OpteeBuild, uboot: Path,
             pin_args: Sequence[str], rot_pkh: Path) -> Path:
    keys = [a for opt, label in FIP_KEYS.items() for a in (opt, key_uri(label))]
    images = ["--tb-fw", tfa.bl2, "--soc-fw", tfa.bl31, "--tos-fw", optee.header,
              "--tos-fw-extra1", optee.pager, "--nt-fw", uboot]
    if optee.pageable.stat().st_size:  # fiptool drops an empty image; OP-TEE 4.x pages nothing here
        images += ["--tos-fw-extra2", optee.pageable]
    sign("fip", "sign", "--cot", "generic", *keys, *images, "--out", out, "--force", *pin_args)
    sign("fip", "verify", "--cot", "generic", "--rot-pkh", rot_pkh, "--fip", out)
    return out


def _runtime_dtb(sign: Sign, work: Path, tfa, optee, nodtb: Path, pin_args, rot_pkh: Path,
                 progress) -> bytes:
    """The run-time tree for this TF-A and OP-TEE (cached: it depends on nothing else)."""
    ident = hashlib.sha256(b"".join(p.read_bytes() for p in (tfa.bl2, tfa.bl31, optee.header, optee.pager))
                           + " ".join(chain.MACHINE_ARGS).encode()).hexdigest()[:20]
    cached = cache.cache_dir("firmware") / f"runtime-{ident}.dtb"
    if cached.is_file():
        return cached.read_bytes()
    progress("reading the device tree TF-A and OP-TEE hand over (one boot, cached)")
    probe = work / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    uboot = probe / "u-boot.bin"
    uboot.write_bytes(firmware.with_control_dtb(nodtb, qemu_dtb(probe / "qemu.dtb", tfa.bl1)))
    fip = sign_fip(sign, probe / "fip.bin", tfa, optee, uboot, pin_args, rot_pkh)
    flash = probe / "flash.bin"
    flash.write_bytes(chain.flash_image(tfa.bl1, fip.read_bytes()))
    dtb = chain.capture_runtime_dtb(flash, probe / "console")
    tmp = cached.with_name(cached.name + ".tmp")
    tmp.write_bytes(dtb)
    tmp.replace(cached)
    return dtb


def build_device(out: Path, pki_dir: Path, sign: Sign, pin_args: Sequence[str], *,
                 init_body: str = TEE_BODY, modules: Sequence[str] = ("tee", "optee"),
                 extra_files: Mapping[str, bootmedia.FileContent] | None = None, verity: bool = False,
                 rootfs: Path | None = None, progress: Callable[[str], None] = print) -> Device:
    """The signed device; ``init_body`` runs first in the initramfs, then (``verity``) the switch to
    the verity root, whose init prints the userspace marker, or the marker itself. ``rootfs`` (an
    ext4 image, e.g. the runtime system of guest_system.py) replaces the small marker root; it is
    not read whole at boot (dm-verity still checks every block it reads)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rot_pem = (pki_dir / "keys" / f"{PLAN}-fip.pub.pem").read_bytes()
    rot_pkh = pki_dir / "fuses" / f"{PLAN}-fip.rotpk_hash.bin"
    from cryptography.hazmat.primitives import serialization

    rot_der = serialization.load_pem_public_key(rot_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if firmware.rotpk_hash(rot_der) != rot_pkh.read_bytes():
        raise chain.ChainError(f"{rot_pkh} is not the hash of {PLAN}-fip's public key")
    tfa = firmware.build_tfa(rot_pem, rot_der, progress=progress)
    optee = firmware.build_optee((pki_dir / "keys" / f"{TA_KEY}.pub.pem").read_bytes(), progress=progress)
    nodtb = firmware.build_uboot(progress=progress)

    runtime = out / "runtime.dtb"
    runtime.write_bytes(_runtime_dtb(sign, out, tfa, optee, nodtb, pin_args, rot_pkh, progress))
    control = out / "u-boot-control.dtb"
    sign("fit", "add-pubkey", "--key", key_uri(FIT_KEY), "--dtb", runtime, "--out", control,
         "--key-name-hint", FIT_KEY, "--required", "conf", "--force", *pin_args)
    uboot = out / "u-boot.bin"
    uboot.write_bytes(firmware.with_control_dtb(nodtb, control.read_bytes()))
    fip = sign_fip(sign, out / "fip.bin", tfa, optee, uboot, pin_args, rot_pkh)
    flash = out / "flash.bin"
    flash.write_bytes(chain.flash_image(tfa.bl1, fip.read_bytes()))

    kernel_dtb = out / "kernel.dtb"
    kernel_dtb.write_bytes(chain.kernel_dtb(runtime.read_bytes(), BOOTARGS))
    media = bootmedia.fetch_boot_media(flavour="generic")
    files, modules = dict(extra_files or {}), list(modules)
    disk = payload_block = None
    if verity:
        if rootfs is None:
            rootfs = out / "rootfs.ext4"
            payload_block = verity_root.make_rootfs(rootfs, media.busybox, bootmedia.USERSPACE_MARKER)
        signed = verity_root.sign_rootfs(sign, rootfs, out / "rootfs-verity", key_uri(VERITY_KEY),
                                         pki_dir / "certs" / f"{VERITY_KEY}.pem", pin_args)
        disk = signed / "rootfs.verity.img"
        files.update(verity_root.initramfs_files(signed))
        modules += verity_root.MODULES
        init = bootmedia.init_script(init_body + verity_root.init_body(read_all=payload_block is not None))
    else:
        init = bootmedia.init_script(init_body + f"echo {bootmedia.USERSPACE_MARKER}\n")
    unsigned = fitbuild.build_kernel_fit(out / "kernel-unsigned.itb", kernel_dtb, init=init,
                                         modules=modules, media=media, extra_files=files,
                                         key_name_hint=FIT_KEY,
                                         kernel_load=chain.KERNEL_LOAD, source_date_epoch=1700000000)
    fit = out / "kernel.itb"
    sign("fit", "sign", "--key", key_uri(FIT_KEY), "--in", unsigned, "--out", fit, "--force", *pin_args)
    sign("fit", "verify", "--dtb", control, "--in", fit)
    return Device(flash, fip, fit, control, runtime, tfa, optee, uboot, disk, payload_block)
