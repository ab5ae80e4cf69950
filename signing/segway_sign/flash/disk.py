"""The signed disk image of a release, ready for ``bmaptool copy``.

The build's wic holds unsigned boot artifacts (the build runs before the sign job), so the signed ones
are written into its GPT partitions, found by name (:func:`signed_wic`). Deferred builds deploy no wic:
then the segway A/B layout is laid out from the release itself (:func:`build_disk`). Either way a new
block map is made with ``bmaptool create``. What differs between boards comes from :mod:`.boards`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from . import tools
from .artifacts import Release
from .board import FWU_METADATA, Board
from .boards import get
from .gpt import BOOT_NAMES, HASH_NAMES, KERNEL_NAMES, MIB, ROOTFS_NAMES, SECTOR, Partition, partition_to_file, read_gpt


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


def _replace_in_filesystem(disk: Path, part: Partition, name: str, payload: Path, work: Path) -> None:
    """Replace /<name> in the ext4 (debugfs) or FAT (mtools) file system of a partition."""
    fs = work / f"{part.name}.fs"
    partition_to_file(disk, part, fs)
    head = fs.read_bytes()[:1082] if fs.stat().st_size >= 1082 else b""
    if head[1080:1082] == b"\x53\xef":
        tools.debugfs.replace(fs, name, payload, work / "debugfs.cmd")
        written = tools.debugfs.cat(fs, name)
    elif head[510:512] == b"\x55\xaa" and (b"FAT" in head[54:62] or b"FAT32" in head[82:90]):
        tools.mcopy.put(fs, payload, name, overwrite=True, check=False)
        written = tools.mtype.cat(fs, name)
    else:
        raise InputError(f"partition '{part.name}' is neither ext4 nor FAT; give the FIT a raw 'kernel' partition")
    if written != payload.read_bytes():
        raise InputError(f"could not write {name} into partition '{part.name}'")
    _write_at(disk, part.offset, fs, part.size, f"partition '{part.name}'")


def signed_wic(release: Release, board: Board | str, out: Path, allow_unsigned: bool, work: Path) -> list[str]:
    """Copy the release's wic to ``out`` with every signed artifact in its partition; returns what was
    written where. Partitions are matched by GPT name."""
    board = get(board)
    src = release.wic(board.steps.disk)
    tools.cp.sparse_copy(src, out)
    parts = {p.name: p for p in read_gpt(out)}
    rootfs, hashtree = release.verity(board.steps.verity)
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

    def image(key: str) -> Path:
        img = board.images[key]
        return release.boot_artifact(img.step, img.suffixes, allow_unsigned)

    for slot in board.wic_slots:
        put(slot.names, image(slot.image), slot.required)
    if board.raw_boot is not None:
        boot, at = image(board.raw_boot.image), board.raw_boot.offset
        first = min(p.first_lba for p in parts.values()) * SECTOR
        _write_at(out, at, boot, first - at, boot.name)
        placed.append(f"{boot.name} -> offset {at:#x}")
    put(ROOTFS_NAMES, rootfs)
    if hashtree is not None:
        put(HASH_NAMES, hashtree)
    fit = release.fit(board.steps.fit)
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
    tools.bmaptool.create(out)
    return placed


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


def build_disk(release: Release, board: Board | str, out: Path, allow_unsigned: bool, work: Path) -> list[str]:
    """The segway A/B layout (meta-segway ``files/wic/segway-ab.wks.in``) from the release's artifacts:
    [the board's raw partitions, e.g. STM32MP1's fsbl1 fsbl2 metadata1 metadata2 fip-a fip-b u-boot-env]
    boot-a boot-b (FAT, signed FIT as /fitImage) rootfs-a rootfs-b (dm-verity image) [rootfs-hash]
    data (empty ext4), the first partition at the board's ``disk_start``. A board's raw boot image
    (i.MX: at 33 KiB) goes before the first partition."""
    board = get(board)
    rootfs, hashtree = release.verity(board.steps.verity)
    fit = release.fit(board.steps.fit)
    payloads = {key: release.boot_artifact(img.step, img.suffixes, allow_unsigned) for key, img in board.images.items()}
    banks: tuple[str, ...] = ()
    if board.steps.fwu_metadata:
        # parsed as one image (the FIP) in two banks; each bank's partition gets the GUID named here
        payloads[FWU_METADATA], md = release.fwu_metadata(board.steps.fwu_metadata)
        banks = tuple(str(u).upper() for u in md.images[0].bank_uuids)
    parts = [_NewPartition(p.name, p.size, payloads[p.payload] if p.payload else None, p.type,
                           banks[p.fwu_bank] if p.fwu_bank is not None else None)
             for p in board.raw_partitions]
    start = board.disk_start
    boot_fs = work / "boot.vfat"
    tools.mkfs_vfat.make(boot_fs, "BOOT", 64 * 1024)
    tools.mcopy.put(boot_fs, fit, "fitImage")
    data_fs = work / "data.ext4"
    tools.mkfs_ext4.make(data_fs, "data", "256M")
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
    tools.sgdisk.layout(out, parts, SECTOR)
    placed = []
    for part in parts:
        if part.payload is None:
            continue  # left empty (zeros): U-Boot writes its environment there
        _write_at(out, part.offset, part.payload, part.size, part.payload.name, sparse=True)
        placed.append(f"{part.payload.name} -> {part.name}")
    if board.raw_boot is not None:
        boot, at = payloads[board.raw_boot.image], board.raw_boot.offset
        _write_at(out, at, boot, start - at, boot.name, sparse=True)
        placed.append(f"{boot.name} -> offset {at:#x}")
    placed[placed.index(f"{boot_fs.name} -> boot-a")] = f"{fit.name} -> boot-a:/fitImage"
    placed[placed.index(f"{boot_fs.name} -> boot-b")] = f"{fit.name} -> boot-b:/fitImage"
    tools.bmaptool.create(out)
    return placed


def signed_disk(release: Release, board: Board | str, out: Path, allow_unsigned: bool, work: Path) -> list[str]:
    """The release's own wic with the signed artifacts put in, or the segway layout built afresh."""
    board = get(board)
    if board.steps.disk in release.steps:
        return signed_wic(release, board, out, allow_unsigned, work)
    return build_disk(release, board, out, allow_unsigned, work)


def disk_name(release: Release, board: Board | str) -> str:
    """The signed disk's file name: the build's wic's, or ``segway-<machine>.wic`` for a built one."""
    board = get(board)
    if board.steps.disk in release.steps:
        return release.wic(board.steps.disk).name
    return f"segway-{release.manifest['machine']}.wic"
