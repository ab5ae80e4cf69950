"""Flashing a signed release: STM32CubeProgrammer flash layouts (STM32MP1), uuu scripts (i.MX8M)
and bmaptool-ready wic images that carry the signed artifacts.

The release is verified first (``release verify`` against trusted certificates). The build's wic
image holds unsigned boot artifacts (the build runs before the sign job), so the signed ones are
written into its GPT partitions, found by name, and a new block map is made with ``bmaptool create``.
``scripts/flash-stm32mp1`` and ``scripts/flash-imx`` are thin wrappers over :func:`main`.
"""

from __future__ import annotations

import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..atomic import output_dir
from ..errors import InputError, SegwayError, UsageError
from ..formats import fwu_metadata as fwu
from .verify import load_certs_dir, verify_release

SECTOR = 512
MIB = 1 << 20
# GPT partition names (meta-segway wic/segway-ab.wks.in, ST and NXP layouts).
ROOTFS_NAMES = ("rootfs", "rootfs-a", "rootfs-b")
HASH_NAMES = ("rootfs-hash", "verity", "rootfs-verity")
BOOT_NAMES = ("boot-a", "boot-b", "bootfs", "boot")
KERNEL_NAMES = ("kernel", "kernel-a", "kernel-b", "fit")
# Step types whose output a ROM or earlier stage authenticates; anything else is unsigned.
SIGNED_BOOT_TYPES = {"stm32", "fip", "hab", "ahab"}
# i.MX8M Mini/Quad: the ROM reads the boot image 33 KiB into the SD card / eMMC user area.
IMX8M_BOOT_OFFSET = 33 * 1024
# STM32MP1 first stage as in ST's wks (meta-st-stm32mp wic/sdcard-stm32mp157f-*-optee-1GB.wks.in) and
# segway-image.bb: the FIP banks' partition type, and sgdisk's code for the other raw partitions.
STM32_FIP_TYPE = "19D5DF83-11B0-457B-BE2C-7559C13142A5"
RAW_PARTITION_TYPE = "8301"
# The release step carrying TF-A's FWU metadata (meta-st-stm32mp's "fw-update" feature, on by default).
FWU_METADATA_STEP = "fwu-metadata"


@dataclass
class Partition:
    name: str
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def read_gpt(path: Path) -> list[Partition]:
    """Partitions of a GPT disk image (primary header at LBA 1)."""
    with open(path, "rb") as f:
        f.seek(SECTOR)
        hdr = f.read(92)
        if hdr[:8] != b"EFI PART":
            raise InputError(f"{path.name} has no GPT (wic images for these boards must use --ptable gpt)")
        entries_lba, count, entry_size = struct.unpack_from("<QII", hdr, 72)
        if not 128 <= entry_size <= 4096 or count > 1024:
            raise InputError(f"{path.name}: implausible GPT header")
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    parts = []
    for i in range(count):
        e = table[i * entry_size:(i + 1) * entry_size]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(name, first, last))
    return parts


@dataclass
class Release:
    """A verified release and its artifacts, looked up by plan step id."""

    path: Path
    manifest: dict
    steps: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, certs_dir: Path) -> "Release":
        res = verify_release(path, load_certs_dir(certs_dir))
        return cls(Path(path), res.manifest, {s["id"]: s for s in res.manifest["steps"]})

    def files(self, step_id: str) -> list[Path]:
        step = self.steps.get(step_id)
        if step is None:
            return []
        return [self.path / rel for rel in sorted(step["outputs"])]

    def one(self, step_id: str, *suffixes: str) -> Path:
        found = [p for p in self.files(step_id) if p.name.endswith(suffixes)]
        if len(found) != 1:
            have = ", ".join(p.name for p in self.files(step_id)) or "nothing"
            raise InputError(f"release step '{step_id}' should hold one {'/'.join(suffixes)} file (has {have})")
        return found[0]

    def boot_artifact(self, step_id: str, suffixes: tuple[str, ...], allow_unsigned: bool) -> Path:
        step = self.steps.get(step_id)
        if step is None:
            raise InputError(f"the release has no '{step_id}' step")
        if step["type"] not in SIGNED_BOOT_TYPES and not allow_unsigned:
            raise InputError(f"release step '{step_id}' is of type {step['type']}, not a signed boot image "
                             "(--allow-unsigned-boot for an open development board)")
        return self.one(step_id, *suffixes)

    def verity(self) -> tuple[Path, Path | None]:
        """(rootfs image, hash tree or None for the appended layout)."""
        details = self.steps.get("rootfs-verity", {}).get("details")
        if not details:
            raise InputError("the release has no 'rootfs-verity' step")
        if details["layout"] == "appended":
            return self.one("rootfs-verity", ".verity.img"), None
        image = [p for p in self.files("rootfs-verity")
                 if not p.name.endswith((".hashtree", ".roothash", ".p7s", ".env"))]
        if len(image) != 1:
            raise InputError("release step 'rootfs-verity' should hold exactly one rootfs image")
        return image[0], self.one("rootfs-verity", ".hashtree")

    def fit(self) -> Path:
        return self.path / "kernel-fit" / self.steps["kernel-fit"]["details"]["fit"]

    def fwu_metadata(self) -> tuple[Path, fwu.FwuMetadata]:
        """TF-A's FWU metadata: the file and what it says (one image, the FIP, in two banks)."""
        if FWU_METADATA_STEP not in self.steps:
            raise InputError(f"the release has no '{FWU_METADATA_STEP}' step: TF-A with firmware update "
                             "(meta-st-stm32mp's 'fw-update') boots only from a disk with metadata1/metadata2")
        path = self.one(FWU_METADATA_STEP, ".bin")
        return path, fwu.parse(path.read_bytes())

    def wic(self) -> Path:
        return self.one("disk", ".wic")


# --- putting signed artifacts into the wic image -----------------------------------------------

def _write_at(disk: Path, offset: int, data_path: Path, limit: int, what: str, sparse: bool = False) -> None:
    """Copy a file into the disk image; with ``sparse`` (fresh image) all-zero MiBs stay holes."""
    size = data_path.stat().st_size
    if size > limit:
        raise InputError(f"{what} ({size} bytes) does not fit its place in the wic image ({limit} bytes)")
    zero = bytes(MIB)
    with open(disk, "r+b") as out, open(data_path, "rb") as src:
        pos = offset
        for chunk in iter(lambda: src.read(MIB), b""):
            if not (sparse and chunk == zero[:len(chunk)]):
                out.seek(pos)
                out.write(chunk)
            pos += len(chunk)


def _partition_bytes_to_file(disk: Path, part: Partition, out: Path) -> None:
    with open(disk, "rb") as f, open(out, "wb") as o:
        f.seek(part.offset)
        remaining = part.size
        while remaining:
            chunk = f.read(min(remaining, MIB))
            if not chunk:
                break
            o.write(chunk)
            remaining -= len(chunk)


def _replace_in_filesystem(disk: Path, part: Partition, name: str, payload: Path, work: Path) -> None:
    """Replace /<name> in the ext4 (debugfs) or FAT (mtools) file system of a partition."""
    fs = work / f"{part.name}.fs"
    _partition_bytes_to_file(disk, part, fs)
    head = fs.read_bytes()[:1082] if fs.stat().st_size >= 1082 else b""
    if head[1080:1082] == b"\x53\xef":
        script = work / "debugfs.cmd"
        script.write_text(f"rm /{name}\nwrite {payload} /{name}\n")
        subprocess.run(["debugfs", "-w", "-f", str(script), str(fs)], capture_output=True, text=True)
        check = subprocess.run(["debugfs", "-R", f"cat /{name}", str(fs)], capture_output=True)
    elif head[510:512] == b"\x55\xaa" and (b"FAT" in head[54:62] or b"FAT32" in head[82:90]):
        subprocess.run(["mcopy", "-o", "-i", str(fs), str(payload), f"::{name}"], capture_output=True, text=True)
        check = subprocess.run(["mtype", "-i", str(fs), f"::{name}"], capture_output=True)
    else:
        raise InputError(f"partition '{part.name}' is neither ext4 nor FAT; give the FIT a raw 'kernel' partition")
    if check.stdout != payload.read_bytes():
        raise InputError(f"could not write {name} into partition '{part.name}'")
    _write_at(disk, part.offset, fs, part.size, f"partition '{part.name}'")


def signed_wic(release: Release, board: str, out: Path, allow_unsigned: bool, work: Path) -> list[str]:
    """Copy the release's wic to ``out`` with every signed artifact in its partition; returns what was
    written where. Partitions are matched by GPT name."""
    src = release.wic()
    subprocess.run(["cp", "--sparse=always", str(src), str(out)], check=True)
    parts = {p.name: p for p in read_gpt(out)}
    rootfs, hashtree = release.verity()
    placed = []

    def put(names: tuple[str, ...], payload: Path, required: bool = True) -> None:
        hit = [n for n in names if n in parts]
        if not hit:
            if required:
                raise InputError(f"the wic image has no partition named {' or '.join(names)}")
            return
        for n in hit:
            _write_at(out, parts[n].offset, payload, parts[n].size, payload.name)
            placed.append(f"{payload.name} -> {n}")

    if board == "stm32mp1":
        put(("fsbl1",), release.boot_artifact("tfa-bl2", (".stm32",), allow_unsigned))
        put(("fsbl2",), release.boot_artifact("tfa-bl2", (".stm32",), allow_unsigned), required=False)
        put(("fip-a", "fip"), release.boot_artifact("fip", (".bin",), allow_unsigned))
        put(("fip-b",), release.boot_artifact("fip", (".bin",), allow_unsigned), required=False)
    else:
        boot = release.boot_artifact("imx-boot", ("",), allow_unsigned)
        first = min(p.first_lba for p in parts.values()) * SECTOR
        _write_at(out, IMX8M_BOOT_OFFSET, boot, first - IMX8M_BOOT_OFFSET, boot.name)
        placed.append(f"{boot.name} -> offset {IMX8M_BOOT_OFFSET:#x}")
    put(ROOTFS_NAMES, rootfs)
    if hashtree is not None:
        put(HASH_NAMES, hashtree)
    fit = release.fit()
    raw = [n for n in KERNEL_NAMES if n in parts]
    boots = [n for n in BOOT_NAMES if n in parts]
    if raw:
        put(tuple(raw), fit)
    elif boots:
        for n in boots:
            _replace_in_filesystem(out, parts[n], "fitImage", fit, work)
            placed.append(f"{fit.name} -> {n}:/fitImage")
    else:
        raise InputError("the wic image has no 'kernel' or boot partition for the FIT")
    _bmap(out)
    return placed


# --- a disk image built from the release (deferred builds deploy no wic) --------------------------

def _mib(n: int) -> int:
    return -(-n // MIB) * MIB


@dataclass
class _NewPartition:
    """A partition of a disk laid out by :func:`build_disk`."""

    name: str
    size: int
    payload: Path | None  # None: left empty (zeros)
    type: str | None = None  # sgdisk type code or GUID; None: sgdisk's default
    guid: str | None = None  # unique partition GUID; None: random
    offset: int = 0  # set when laid out


def build_disk(release: Release, board: str, out: Path, allow_unsigned: bool, work: Path) -> list[str]:
    """The segway A/B layout (meta-segway ``files/wic/segway-ab.wks.in``) from the release's artifacts:
    [fsbl1 fsbl2 metadata1 metadata2 fip-a fip-b u-boot-env (STM32MP1)] boot-a boot-b (FAT, signed FIT as /fitImage)
    rootfs-a rootfs-b (dm-verity image) [rootfs-hash] data (empty ext4). On i.MX the signed boot image
    sits at 33 KiB and the first partition at 8 MiB, past U-Boot's raw environment (4 MiB + 4 KiB with
    u-boot-fslc, 7 MiB + 16 KiB with u-boot-imx)."""
    rootfs, hashtree = release.verity()
    fit = release.fit()
    parts: list[_NewPartition] = []
    if board == "stm32mp1":
        tfa = release.boot_artifact("tfa-bl2", (".stm32",), allow_unsigned)
        fip = release.boot_artifact("fip", (".bin",), allow_unsigned)
        metadata, md = release.fwu_metadata()  # parsed as one image (the FIP) in two banks
        # TF-A finds metadata1/metadata2 by name and each FIP bank by the unique GUID the metadata names.
        bank_a, bank_b = (str(u).upper() for u in md.images[0].bank_uuids)
        raw = RAW_PARTITION_TYPE
        # u-boot-env: the partition ST's U-Boot keeps its (A/B) environment in, found by that name.
        parts += [_NewPartition("fsbl1", 256 << 10, tfa, raw), _NewPartition("fsbl2", 256 << 10, tfa, raw),
                  _NewPartition("metadata1", 256 << 10, metadata, raw),
                  _NewPartition("metadata2", 256 << 10, metadata, raw),
                  _NewPartition("fip-a", 4 * MIB, fip, STM32_FIP_TYPE, bank_a),
                  _NewPartition("fip-b", 4 * MIB, fip, STM32_FIP_TYPE, bank_b),
                  _NewPartition("u-boot-env", 512 << 10, None, raw)]
        start = 34 * SECTOR  # ST layout: fsbl1 right after the primary GPT, at 0x4400
    else:
        boot = release.boot_artifact("imx-boot", ("",), allow_unsigned)
        start = 8 * MIB
    boot_fs = work / "boot.vfat"
    subprocess.run(["mkfs.vfat", "-n", "BOOT", "-C", str(boot_fs), str(64 * 1024)], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(boot_fs), str(fit), "::fitImage"], check=True, capture_output=True)
    data_fs = work / "data.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "data", str(data_fs), "256M"], check=True, capture_output=True)
    rootfs_size = _mib(rootfs.stat().st_size)
    parts += [_NewPartition("boot-a", 64 * MIB, boot_fs), _NewPartition("boot-b", 64 * MIB, boot_fs),
              _NewPartition("rootfs-a", rootfs_size, rootfs), _NewPartition("rootfs-b", rootfs_size, rootfs)]
    if hashtree is not None:
        parts.append(_NewPartition("rootfs-hash", _mib(hashtree.stat().st_size), hashtree))
    parts.append(_NewPartition("data", 256 * MIB, data_fs))
    pos = start
    for part in parts:
        if part.name == "boot-a":
            pos = _mib(pos)  # file systems start on MiB boundaries, as wic's --align does
        part.offset = pos
        pos += part.size
    total = _mib(pos) + MIB  # room for the backup GPT
    with open(out, "wb") as f:
        f.truncate(total)
    args = ["sgdisk", "-a", "1"]
    for i, part in enumerate(parts, 1):
        args += [f"-n{i}:{part.offset // SECTOR}:{(part.offset + part.size) // SECTOR - 1}", f"-c{i}:{part.name}"]
        args += [f"-t{i}:{part.type}"] if part.type else []
        args += [f"-u{i}:{part.guid}"] if part.guid else []
    r = subprocess.run(args + [str(out)], capture_output=True, text=True)
    if r.returncode:
        raise InputError(f"sgdisk could not lay out the disk: {r.stderr.strip() or r.stdout.strip()}")
    placed = []
    for part in parts:
        if part.payload is None:
            continue  # left empty (zeros): U-Boot writes its environment there
        _write_at(out, part.offset, part.payload, part.size, part.payload.name, sparse=True)
        placed.append(f"{part.payload.name} -> {part.name}")
    if board != "stm32mp1":
        _write_at(out, IMX8M_BOOT_OFFSET, boot, start - IMX8M_BOOT_OFFSET, boot.name, sparse=True)
        placed.append(f"{boot.name} -> offset {IMX8M_BOOT_OFFSET:#x}")
    placed[placed.index(f"{boot_fs.name} -> boot-a")] = f"{fit.name} -> boot-a:/fitImage"
    placed[placed.index(f"{boot_fs.name} -> boot-b")] = f"{fit.name} -> boot-b:/fitImage"
    _bmap(out)
    return placed


def _bmap(image: Path) -> None:
    r = subprocess.run(["bmaptool", "create", "-o", str(image) + ".bmap", str(image)], capture_output=True, text=True)
    if r.returncode:
        raise InputError(f"bmaptool create failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")


def signed_disk(release: Release, board: str, out: Path, allow_unsigned: bool, work: Path) -> list[str]:
    """The release's own wic with the signed artifacts put in, or the segway layout built afresh."""
    if "disk" in release.steps:
        return signed_wic(release, board, out, allow_unsigned, work)
    return build_disk(release, board, out, allow_unsigned, work)


def disk_name(release: Release) -> str:
    if "disk" in release.steps:
        return release.wic().name
    return f"segway-{release.manifest['machine']}.wic"


# --- STM32CubeProgrammer flash layout -----------------------------------------------------------

def stm32mp1_flashlayout(release: Release, target: str, allow_unsigned: bool, wic: Path) -> str:
    """The TSV STM32_Programmer_CLI -w takes, with partition offsets from the (signed) wic image.

    SD card: everything on mmc0 (SDMMC1) at the GPT offsets. eMMC: the FSBL goes to the boot
    partitions (mmc1 boot1/boot2), the rest to the user area at the same offsets. The first two
    lines are what the ROM and TF-A load over USB to run the programming session.
    """
    if target not in ("sdcard", "emmc"):
        raise UsageError("target must be sdcard or emmc")
    tfa = release.boot_artifact("tfa-bl2", (".stm32",), allow_unsigned)
    fip = release.boot_artifact("fip", (".bin",), allow_unsigned)
    rootfs, hashtree = release.verity()
    parts = {p.name: p for p in read_gpt(wic)}
    ip = "mmc0" if target == "sdcard" else "mmc1"
    rows = [("-", 0x01, "fsbl-boot", "Binary", "none", "0x0", tfa.name),
            ("-", 0x03, "fip-boot", "FIP", "none", "0x0", fip.name)]
    ident = 0x04
    sources = {"fsbl1": (tfa, "Binary"), "fsbl2": (tfa, "Binary"), "fip-a": (fip, "FIP"), "fip": (fip, "FIP"),
               "fip-b": (fip, "FIP"), "kernel": (release.fit(), "Binary")}
    if FWU_METADATA_STEP in release.steps:
        metadata = release.fwu_metadata()[0]
        sources.update({n: (metadata, "FWU_MDATA") for n in ("metadata1", "metadata2")})
    sources.update({n: (rootfs, "System") for n in ROOTFS_NAMES})
    sources.update({n: (f"{n}.img", "FileSystem") for n in BOOT_NAMES})
    if hashtree is not None:
        sources.update({n: (hashtree, "Binary") for n in ("rootfs-hash", "verity", "rootfs-verity")})
    for part in sorted(parts.values(), key=lambda p: p.first_lba):
        src = sources.get(part.name)
        if src is None:
            rows.append(("PE", ident, part.name, "System", ip, f"{part.offset:#010x}", "none"))
        else:
            path, kind = src
            name = path if isinstance(path, str) else path.name
            offset = f"{part.offset:#010x}"
            if target == "emmc" and part.name in ("fsbl1", "fsbl2"):
                offset = "boot1" if part.name == "fsbl1" else "boot2"
            rows.append(("P", ident, part.name, kind, ip, offset, name))
        ident += 1
    lines = ["#Opt\tId\tName\tType\tIP\tOffset\tBinary"]
    lines += ["\t".join([o, f"0x{i:02X}", n, t, p, off, b]) for o, i, n, t, p, off, b in rows]
    return "\n".join(lines) + "\n"


def extract_partition(disk: Path, name: str, out: Path) -> None:
    part = {p.name: p for p in read_gpt(disk)}[name]
    with open(disk, "rb") as f, open(out, "wb") as o:
        f.seek(part.offset)
        o.write(f.read(part.size))


# --- uuu (i.MX) ------------------------------------------------------------------------------------

def imx_uuu_script(boot_name: str, wic_name: str, target: str) -> str:
    """uuu script: boot the signed imx-boot over USB (SDP), then fastboot the disk and bootloader."""
    if target not in ("emmc", "sd"):
        raise UsageError("target must be emmc or sd")
    dev = "${emmc_dev}" if target == "emmc" else "${sd_dev}"
    lines = [
        "uuu_version 1.4.149",
        "# Load the signed boot image into RAM over USB (SDP), continue with fastboot.",
        f"SDP: boot -f {boot_name}",
        "SDPV: delay 1000",
        f"SDPV: write -f {boot_name} -skipspl",
        "SDPV: jump",
        "FB: ucmd setenv fastboot_dev mmc",
        f"FB: ucmd setenv mmcdev {dev}",
        f"FB: ucmd mmc dev {dev}",
        f"FB: flash -raw2sparse all {wic_name}",
        f"FB: flash bootloader {boot_name}",
    ]
    if target == "emmc":
        lines += ["FB: ucmd if env exists emmc_ack; then ; else setenv emmc_ack 0; fi;",
                  f"FB: ucmd mmc partconf {dev} ${{emmc_ack}} 1 0"]
    lines.append("FB: done")
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------------------

def _run_or_print(cmds: list[list[str]], dry_run: bool, cwd: Path) -> None:
    for cmd in cmds:
        line = f"(cd {shlex.quote(str(cwd))} && " + " ".join(shlex.quote(c) for c in cmd) + ")"
        if dry_run:
            click.echo(f"would run: {line}")
            continue
        click.echo(f"running: {line}", err=True)
        if subprocess.run(cmd, cwd=cwd).returncode:
            raise SegwayError(f"{cmd[0]} failed")


def _prepare(release: Release, board: str, work: Path, allow_unsigned: bool, target: str) -> dict[str, Path]:
    wic = work / disk_name(release)
    tmp = Path(tempfile.mkdtemp(prefix="flash-", dir=work))
    try:
        placed = signed_disk(release, board, wic, allow_unsigned, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (work / "placed.txt").write_text("\n".join(placed) + "\n")
    out = {"wic": wic, "bmap": Path(str(wic) + ".bmap")}
    if board == "stm32mp1":
        for t in ("sdcard", "emmc"):
            path = work / f"flashlayout_{t}.tsv"
            path.write_text(stm32mp1_flashlayout(release, t, allow_unsigned, wic))
            out[f"layout-{t}"] = path
        for p in (release.boot_artifact("tfa-bl2", (".stm32",), allow_unsigned),
                  release.boot_artifact("fip", (".bin",), allow_unsigned), release.fit(), *filter(None, release.verity())):
            shutil.copyfile(p, work / p.name)
        for p in read_gpt(wic):
            if p.name in BOOT_NAMES:
                extract_partition(wic, p.name, work / f"{p.name}.img")
    else:
        boot = release.boot_artifact("imx-boot", ("",), allow_unsigned)
        shutil.copyfile(boot, work / boot.name)
        for t in ("emmc", "sd"):
            path = work / f"uuu_{t}.lst"
            path.write_text(imx_uuu_script(boot.name, wic.name, t))
            out[f"uuu-{t}"] = path
    return out


def main(board: str, argv: list[str] | None = None) -> None:
    prog = {"stm32mp1": "flash-stm32mp1", "imx": "flash-imx"}[board]
    targets = ["sdcard", "emmc"] if board == "stm32mp1" else ["emmc", "sd"]

    @click.command(name=prog, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--certs", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Trusted certificates; the release is verified against them first.")
    @click.option("--target", type=click.Choice(targets), default=targets[0], show_default=True)
    @click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Where the signed wic, its bmap and the layout/script go (default: <release>-flash).")
    @click.option("--device", metavar="DEV", help="Write the signed wic to this block device with bmaptool.")
    @click.option("--usb", "usb", is_flag=True,
                  help="Program over USB (STM32_Programmer_CLI / uuu) instead of a card reader.")
    @click.option("--dry-run", is_flag=True, help="Verify and print what would be prepared and run; write nothing.")
    @click.option("--allow-unsigned-boot", is_flag=True,
                  help="Accept an unsigned first-stage image (open development boards only).")
    @click.option("--force", is_flag=True, help="Replace an existing work dir.")
    @click.argument("release_dir", type=click.Path(file_okay=False, path_type=Path))
    def cmd(certs, target, work_dir, device, usb, dry_run, allow_unsigned_boot, force, release_dir):
        if bool(device) == usb:
            raise UsageError("give exactly one of --device DEV or --usb")
        release = Release.open(release_dir, certs)
        click.echo(f"{release_dir}: signatures and manifest verified ({release.manifest['machine']})")
        work = work_dir or release_dir.with_name(release_dir.name + "-flash")
        wic = work / disk_name(release)
        if usb and board == "stm32mp1":
            cmds = [["STM32_Programmer_CLI", "-c", "port=usb1", "-w", f"flashlayout_{target}.tsv"]]
        elif usb:
            cmds = [["uuu", f"uuu_{target}.lst"]]
        else:
            if not dry_run and not Path(device).is_block_device():
                raise UsageError(f"{device} is not a block device")
            cmds = [["bmaptool", "copy", "--bmap", f"{wic.name}.bmap", wic.name, device]]
        if not dry_run and shutil.which(cmds[0][0]) is None:
            raise UsageError(f"{cmds[0][0]} is not installed")
        if dry_run:
            with tempfile.TemporaryDirectory(prefix="flash-dry-") as tmp:
                prepared = _prepare(release, board, Path(tmp), allow_unsigned_boot, target)
                click.echo(f"would prepare {work}/:")
                for line in (Path(tmp) / "placed.txt").read_text().splitlines():
                    click.echo(f"  {wic.name}: {line}")
                for key, path in prepared.items():
                    click.echo(f"  {path.name}")
                layout = prepared.get(f"layout-{target}") or prepared.get(f"uuu-{target}")
                click.echo(f"--- {layout.name} ---")
                click.echo(layout.read_text(), nl=False)
                click.echo("---")
                if board == "imx" and shutil.which("uuu"):
                    # uuu parses the script and opens every file it names without a board attached.
                    r = subprocess.run(["uuu", "-dry", layout.name], cwd=tmp, capture_output=True,
                                       text=True, timeout=60, stdin=subprocess.DEVNULL)
                    if r.returncode:
                        raise SegwayError(f"uuu -dry rejects {layout.name}")
                    click.echo(f"uuu -dry: {layout.name} OK")
        else:
            with output_dir(work, force=force) as tmp:
                _prepare(release, board, tmp, allow_unsigned_boot, target)
            # The prepared files now live in ``work``; the commands name them there.
        _run_or_print(cmds, dry_run, work)

    try:
        cmd.main(argv, prog_name=prog, standalone_mode=False)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except SegwayError as err:
        click.echo(f"{prog}: error: {err}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        click.echo(f"{prog}: error: {err.filename or ''}: {err.strerror or err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
