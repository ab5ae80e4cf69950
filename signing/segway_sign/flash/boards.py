"""The boards segway flashes, as a table: what differs between them is data here, not branches in the
disk builder or the command.

Per board: the first-stage images and the release steps that sign them, where they go in the build's
wic and in a disk built from the release, the step ids of the common artifacts, the flash-layout
writer (STM32CubeProgrammer TSV or uuu script) and the USB programming tool.
"""

from __future__ import annotations

from ..errors import UsageError
from . import layouts, tools
from .board import FWU_METADATA, Board, BootImage, RawBootImage, RawPartition, Steps, WicSlot
from .gpt import MIB, SECTOR

# STM32MP1 first stage as in ST's wks (meta-st-stm32mp wic/sdcard-stm32mp157f-*-optee-1GB.wks.in) and
# segway-image.bb: the FIP banks' partition type (the other raw partitions: RAW_PARTITION_TYPE).
STM32_FIP_TYPE = "19D5DF83-11B0-457B-BE2C-7559C13142A5"
# i.MX8M Mini/Quad: the ROM reads the boot image 33 KiB into the SD card / eMMC user area.
IMX8M_BOOT_OFFSET = 33 * 1024


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board(
        name="stm32mp1",
        title="STM32MP157: signed TF-A (STM32 header), FIP, FIT, rootfs; STM32CubeProgrammer over USB",
        images={"fsbl": BootImage("tfa-bl2", (".stm32",)), "fip": BootImage("fip", (".bin",))},
        layout=layouts.CubeProgrammerLayout(
            boot_rows=(("fsbl-boot", 0x01, "fsbl"), ("fip-boot", 0x03, "fip")),
            types={"fsbl": "Binary", "fip": "FIP"}),
        usb=tools.stm32_programmer,
        wic_slots=(WicSlot(("fsbl1",), "fsbl"), WicSlot(("fsbl2",), "fsbl", required=False),
                   WicSlot(("fip-a", "fip"), "fip"), WicSlot(("fip-b",), "fip", required=False)),
        # TF-A finds metadata1/metadata2 by name and each FIP bank by the unique GUID the metadata names;
        # u-boot-env: the partition ST's U-Boot keeps its (A/B) environment in, found by that name.
        raw_partitions=(RawPartition("fsbl1", 256 << 10, "fsbl"), RawPartition("fsbl2", 256 << 10, "fsbl"),
                        RawPartition("metadata1", 256 << 10, FWU_METADATA),
                        RawPartition("metadata2", 256 << 10, FWU_METADATA),
                        RawPartition("fip-a", 4 * MIB, "fip", STM32_FIP_TYPE, fwu_bank=0),
                        RawPartition("fip-b", 4 * MIB, "fip", STM32_FIP_TYPE, fwu_bank=1),
                        RawPartition("u-boot-env", 512 << 10, None)),
        disk_start=34 * SECTOR,  # ST layout: fsbl1 right after the primary GPT, at 0x4400
        # meta-st-stm32mp's "fw-update" feature (on by default): TF-A boots only with FWU metadata.
        steps=Steps(fwu_metadata="fwu-metadata"),
    ),
    Board(
        name="imx",
        title="i.MX8M Mini: signed imx-boot (HAB), FIT, rootfs; uuu over USB",
        images={"boot": BootImage("imx-boot", ("",))},
        layout=layouts.UuuScript(image="boot"),
        usb=tools.uuu,
        raw_boot=RawBootImage("boot", IMX8M_BOOT_OFFSET),
        # past U-Boot's raw environment (4 MiB + 4 KiB with u-boot-fslc, 7 MiB + 16 KiB with u-boot-imx)
        disk_start=8 * MIB,
    ),
)}


def get(board: "Board | str") -> Board:
    """A board by name (or the board itself)."""
    if isinstance(board, Board):
        return board
    try:
        return BOARDS[board]
    except KeyError:
        raise UsageError(f"unknown board '{board}' (known: {', '.join(BOARDS)})") from None
