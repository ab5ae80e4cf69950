"""What a board is to flashing: its first-stage images and the release steps that sign them, where
they go on the disk, the flash-layout writer and the USB programming tool. The boards themselves are
the table in :mod:`.boards`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .artifacts import Release
from .gpt import MIB

# sgdisk's code for a raw partition (Linux reserved, as --part-type 0x8301 in the wks).
RAW_PARTITION_TYPE = "8301"
# The payload key of a raw partition that holds the release's FWU metadata.
FWU_METADATA = "fwu-metadata"


class LayoutWriter(Protocol):
    """Writes what a USB programming tool reads (:mod:`.layouts`)."""

    targets: tuple[str, ...]

    def file_name(self, target: str) -> str: ...

    def prepare(self, release: Release, board: "Board", work: Path, wic: Path,
                allow_unsigned: bool) -> dict[str, Path]: ...


class UsbTool(Protocol):
    """Programs a board over USB from a layout file (:mod:`.tools`)."""

    name: str

    def program(self, layout: str) -> list[str]: ...

    def check(self, layout: str, cwd: Path) -> str | None: ...

    def require(self) -> None: ...

    def run_attached(self, args: list[str], cwd: Path) -> None: ...


@dataclass(frozen=True)
class BootImage:
    """A first-stage image: the release step that signs it and how its output file's name ends."""

    step: str
    suffixes: tuple[str, ...]


@dataclass(frozen=True)
class WicSlot:
    """Where a boot image goes in the build's own wic: every GPT partition of these names that exists
    (at least one of them unless the slot is optional)."""

    names: tuple[str, ...]
    image: str  # a key of Board.images
    required: bool = True


@dataclass(frozen=True)
class RawPartition:
    """A partition before the file systems in a disk built from the release."""

    name: str
    size: int
    payload: str | None  # a key of Board.images, FWU_METADATA, or None: left empty (zeros)
    type: str = RAW_PARTITION_TYPE  # sgdisk type code or GUID
    fwu_bank: int | None = None  # unique GUID: the one the FWU metadata names for this bank


@dataclass(frozen=True)
class RawBootImage:
    """A boot image the ROM reads at a fixed byte offset, before the first partition."""

    image: str  # a key of Board.images
    offset: int


@dataclass(frozen=True)
class Steps:
    """Ids of the plan steps holding the artifacts every board flashes."""

    disk: str = "disk"  # the build's wic, when the build deployed one
    verity: str = "rootfs-verity"
    fit: str = "kernel-fit"
    fwu_metadata: str | None = None  # TF-A's FWU metadata, for boards whose TF-A needs it


@dataclass(frozen=True)
class Board:
    """One board: its name (``segway-sign flash NAME``, ``scripts/flash-NAME``), the first-stage
    images by key, the flash-layout writer and USB tool, where the images go in the build's wic
    (``wic_slots``) and in a disk built from the release (``raw_partitions`` before the file
    systems, which start at ``disk_start``; ``raw_boot`` at a byte offset), and the step ids."""

    name: str
    title: str
    images: dict[str, BootImage]  # looked up in this order
    layout: LayoutWriter
    usb: UsbTool
    wic_slots: tuple[WicSlot, ...] = ()
    raw_partitions: tuple[RawPartition, ...] = ()
    raw_boot: RawBootImage | None = None
    disk_start: int = 8 * MIB  # where the first partition of a built disk starts
    steps: Steps = field(default_factory=Steps)

    @property
    def targets(self) -> tuple[str, ...]:
        """Where the board can be flashed; the first is the default."""
        return tuple(self.layout.targets)

    @property
    def script(self) -> str:
        return f"flash-{self.name}"
