"""Reading a GPT disk image: its partitions by name, and a partition's bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

SECTOR = 512
MIB = 1 << 20
# GPT partition names (meta-segway wic/segway-ab.wks.in, ST and NXP layouts).
ROOTFS_NAMES = ("rootfs", "rootfs-a", "rootfs-b")
HASH_NAMES = ("rootfs-hash", "verity", "rootfs-verity")
BOOT_NAMES = ("boot-a", "boot-b", "bootfs", "boot")
KERNEL_NAMES = ("kernel", "kernel-a", "kernel-b", "fit")


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


def partition_to_file(disk: Path, part: Partition, out: Path) -> None:
    """A partition's bytes (as far as the image holds them) into a file of their own."""
    with open(disk, "rb") as f, open(out, "wb") as o:
        f.seek(part.offset)
        remaining = part.size
        while remaining:
            chunk = f.read(min(remaining, MIB))
            if not chunk:
                break
            o.write(chunk)
            remaining -= len(chunk)


def extract_partition(disk: Path, name: str, out: Path) -> None:
    """The partition of this GPT name into a file of its own."""
    partition_to_file(disk, {p.name: p for p in read_gpt(disk)}[name], out)
