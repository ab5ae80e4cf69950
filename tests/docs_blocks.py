"""The shell blocks of the Markdown docs, and which of them are runnable.

Convention: a fenced shell block (```sh, ```bash, ```console or ```shell, indented or not) is marked
by the HTML comment on the last non-blank line before it: ``<!-- runnable -->`` (the tests run it as
written) or ``<!-- not runnable: <reason> -->``. Anything else there leaves the block unmarked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = "<!-- runnable -->"
NOT_RUNNABLE = re.compile(r"<!-- not runnable: (.+\S) -->")
SHELL_FENCE = re.compile(r"^([ \t]*)```(sh|bash|console|shell)[ \t]*\n(.*?)^\1```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: str      # path relative to the repository
    line: int      # line of the opening fence (1-based)
    marker: str    # the last non-blank line before the fence, stripped
    body: str      # the block's text, its indentation removed

    @property
    def runnable(self) -> bool:
        return self.marker == RUNNABLE

    @property
    def marked(self) -> bool:
        return self.runnable or NOT_RUNNABLE.fullmatch(self.marker) is not None

    def __str__(self) -> str:
        first = self.body.splitlines()[0] if self.body.strip() else ""
        return f"{self.page}:{self.line}: {first!r}"


def shell_blocks(page: Path | str, text: str | None = None) -> list[Block]:
    """Every fenced shell block of ``page`` (or of ``text``, read from ``page`` when not given), in order."""
    page = Path(page)
    if text is None:
        text = page.read_text()
    name = str(page.relative_to(REPO)) if page.is_absolute() and REPO in page.parents else str(page)
    blocks = []
    for m in SHELL_FENCE.finditer(text):
        indent = m.group(1)
        body = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in m.group(3).splitlines(keepends=True))
        before = [line for line in text[:m.start()].splitlines() if line.strip()]
        blocks.append(Block(name, text.count("\n", 0, m.start()) + 1, before[-1].strip() if before else "", body))
    return blocks


def unmarked(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if not b.marked]


def runnable_script(blocks: list[Block]) -> str:
    """The runnable blocks joined in order; an unmarked block is an error."""
    bad = unmarked(blocks)
    if bad:
        raise AssertionError("shell blocks marked neither '<!-- runnable -->' nor '<!-- not runnable: <reason> -->': "
                             + "; ".join(map(str, bad)))
    return "\n".join(b.body for b in blocks if b.runnable)
