"""Reading meta-segway's U-Boot Kconfig fragments (``.cfg``) the way U-Boot's kconfig reads a
.config: ``CONFIG_X=value`` or ``# CONFIG_X is not set``; string values are quoted with ``\\"`` and
``\\\\`` escapes."""
from __future__ import annotations

import re
from pathlib import Path

from .layer import LAYER

ASSIGNMENT = re.compile(r'^(CONFIG_[A-Z0-9_]+)=(y|m|-?[0-9]+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')
UNSET = re.compile(r"^# (CONFIG_[A-Z0-9_]+) is not set$")


def fragments() -> list[Path]:
    """Every U-Boot fragment of the layer, dynamic layers included."""
    return sorted(p for p in LAYER.rglob("*.cfg") if "u-boot" in p.parts)


def read_fragment(path: Path) -> dict[str, str | None]:
    """Symbol -> value (strings unescaped, None for "is not set"). A line that is neither a
    comment nor a well-formed assignment raises ValueError."""
    options: dict[str, str | None] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = UNSET.match(line)
        if m:
            options[m.group(1)] = None
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = ASSIGNMENT.match(line)
        if not m:
            raise ValueError("%s:%d: not a Kconfig assignment: %s" % (path.name, number, line))
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        options[m.group(1)] = value
    return options
