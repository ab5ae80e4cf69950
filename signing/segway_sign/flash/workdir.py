"""A flashing work directory: the signed disk, its block map, the board's flash layouts (or uuu
scripts) and the files they name — everything the write to the board reads."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .artifacts import Release
from .board import Board
from .boards import get
from .disk import disk_name, signed_disk


@dataclass
class Prepared:
    wic: Path
    bmap: Path
    layouts: dict[str, Path]  # the layout or script per target
    placed: list[str]  # what went where in the disk

    def files(self) -> list[Path]:
        return [self.wic, self.bmap, *self.layouts.values()]


def prepare(release: Release, board: Board | str, work: Path, allow_unsigned: bool) -> Prepared:
    """Fill ``work`` (an existing, empty directory) for ``board``; ``placed.txt`` lists the placements."""
    board = get(board)
    wic = work / disk_name(release, board)
    tmp = Path(tempfile.mkdtemp(prefix="flash-", dir=work))
    try:
        placed = signed_disk(release, board, wic, allow_unsigned, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (work / "placed.txt").write_text("\n".join(placed) + "\n")
    layouts = board.layout.prepare(release, board, work, wic, allow_unsigned)
    return Prepared(wic, Path(str(wic) + ".bmap"), layouts, placed)
