"""Flash-layout writers: what a USB programming tool reads to write a signed disk to a board.

- :class:`CubeProgrammerLayout`: STM32CubeProgrammer's TSV flash layout (``STM32_Programmer_CLI -w``),
  one per target, with the partition images it names.
- :class:`UuuScript`: an NXP uuu script (SDP boot of the signed boot image, then fastboot).

Each writer's ``prepare`` puts its files, and the files they name, into the work directory beside the
signed disk and returns the layout file per target.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .artifacts import Release
from .board import Board
from .gpt import BOOT_NAMES, HASH_NAMES, ROOTFS_NAMES, extract_partition, read_gpt


def _images(release: Release, board: Board, allow_unsigned: bool) -> dict[str, Path]:
    return {key: release.boot_artifact(img.step, img.suffixes, allow_unsigned) for key, img in board.images.items()}


@dataclass(frozen=True)
class CubeProgrammerLayout:
    """STM32CubeProgrammer flash layouts, with partition offsets from the (signed) disk image.

    SD card: everything on mmc0 (SDMMC1) at the GPT offsets. eMMC: the FSBL goes to the boot
    partitions (mmc1 boot1/boot2), the rest to the user area at the same offsets. The ``boot_rows``
    come first: what the ROM and TF-A load over USB to run the programming session.
    """

    boot_rows: tuple[tuple[str, int, str], ...]  # (name, id, a key of Board.images)
    types: dict[str, str]  # STM32CubeProgrammer partition type per key of Board.images
    targets: tuple[str, ...] = ("sdcard", "emmc")
    ips = {"sdcard": "mmc0", "emmc": "mmc1"}
    # eMMC: these partitions' images go to the hardware boot partitions instead of their GPT offsets.
    emmc_boot_partitions = {"fsbl1": "boot1", "fsbl2": "boot2"}

    @staticmethod
    def file_name(target: str) -> str:
        return f"flashlayout_{target}.tsv"

    def text(self, release: Release, board: Board, target: str, allow_unsigned: bool, wic: Path) -> str:
        """The TSV ``STM32_Programmer_CLI -w`` takes."""
        if target not in self.targets:
            raise UsageError(f"target must be {' or '.join(self.targets)}")
        images = _images(release, board, allow_unsigned)
        rootfs, hashtree = release.verity(board.steps.verity)
        parts = {p.name: p for p in read_gpt(wic)}
        ip = self.ips[target]
        rows = [("-", ident, name, self.types[key], "none", "0x0", images[key].name)
                for name, ident, key in self.boot_rows]
        ident = 0x04
        sources = {n: (images[slot.image], self.types[slot.image]) for slot in board.wic_slots for n in slot.names}
        sources["kernel"] = (release.fit(board.steps.fit), "Binary")
        if board.steps.fwu_metadata in release.steps:
            metadata = release.fwu_metadata(board.steps.fwu_metadata)[0]
            sources.update({n: (metadata, "FWU_MDATA") for n in ("metadata1", "metadata2")})
        sources.update({n: (rootfs, "System") for n in ROOTFS_NAMES})
        sources.update({n: (f"{n}.img", "FileSystem") for n in BOOT_NAMES})
        if hashtree is not None:
            sources.update({n: (hashtree, "Binary") for n in HASH_NAMES})
        for part in sorted(parts.values(), key=lambda p: p.first_lba):
            src = sources.get(part.name)
            if src is None:
                rows.append(("PE", ident, part.name, "System", ip, f"{part.offset:#010x}", "none"))
            else:
                path, kind = src
                name = path if isinstance(path, str) else path.name
                offset = f"{part.offset:#010x}"
                if target == "emmc":
                    offset = self.emmc_boot_partitions.get(part.name, offset)
                rows.append(("P", ident, part.name, kind, ip, offset, name))
            ident += 1
        lines = ["#Opt\tId\tName\tType\tIP\tOffset\tBinary"]
        lines += ["\t".join([o, f"0x{i:02X}", n, t, p, off, b]) for o, i, n, t, p, off, b in rows]
        return "\n".join(lines) + "\n"

    def prepare(self, release: Release, board: Board, work: Path, wic: Path, allow_unsigned: bool) -> dict[str, Path]:
        """A layout per target, the images it names, and each boot file system as ``<name>.img``."""
        out = {}
        for t in self.targets:
            path = work / self.file_name(t)
            path.write_text(self.text(release, board, t, allow_unsigned, wic))
            out[t] = path
        for p in (*_images(release, board, allow_unsigned).values(), release.fit(board.steps.fit),
                  *filter(None, release.verity(board.steps.verity))):
            shutil.copyfile(p, work / p.name)
        for p in read_gpt(wic):
            if p.name in BOOT_NAMES:
                extract_partition(wic, p.name, work / f"{p.name}.img")
        return out


@dataclass(frozen=True)
class UuuScript:
    """uuu scripts: boot the signed boot image over USB (SDP), then fastboot the disk and bootloader."""

    image: str  # the key of Board.images that SDP boots and fastboot writes as the bootloader
    targets: tuple[str, ...] = ("emmc", "sd")
    version = "1.4.149"

    @staticmethod
    def file_name(target: str) -> str:
        return f"uuu_{target}.lst"

    def text(self, boot_name: str, wic_name: str, target: str) -> str:
        if target not in self.targets:
            raise UsageError(f"target must be {' or '.join(self.targets)}")
        dev = "${emmc_dev}" if target == "emmc" else "${sd_dev}"
        lines = [
            f"uuu_version {self.version}",
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

    def prepare(self, release: Release, board: Board, work: Path, wic: Path, allow_unsigned: bool) -> dict[str, Path]:
        """A script per target and the boot image it names."""
        img = board.images[self.image]
        boot = release.boot_artifact(img.step, img.suffixes, allow_unsigned)
        shutil.copyfile(boot, work / boot.name)
        out = {}
        for t in self.targets:
            path = work / self.file_name(t)
            path.write_text(self.text(boot.name, wic.name, t))
            out[t] = path
        return out
