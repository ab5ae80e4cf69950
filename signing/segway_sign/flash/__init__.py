"""Flashing a signed release: the signed disk image (:mod:`.disk`), the flash layouts USB programming
tools read (:mod:`.layouts`: STM32CubeProgrammer TSV, uuu scripts), the boards as a table
(:mod:`.boards`) and one wrapper per external program (:mod:`.tools`). ``segway-sign flash BOARD``
(:mod:`segway_sign.cli.flash`) is the command; ``scripts/flash-stm32mp1`` and ``scripts/flash-imx``
run it.
"""

from .artifacts import Release
from .boards import BOARDS, Board
from .disk import build_disk, disk_name, signed_disk, signed_wic
from .gpt import Partition, extract_partition, read_gpt
from .workdir import Prepared, prepare

__all__ = ["BOARDS", "Board", "Partition", "Prepared", "Release", "build_disk", "disk_name", "extract_partition",
           "prepare", "read_gpt", "signed_disk", "signed_wic"]
