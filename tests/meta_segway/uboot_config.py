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


# U-Boot recipes the layer appends to (named by PN, as in data/uboot-vendor-trees.yaml), with the
# overrides under which each one's boot command fragment applies.
UBOOT_APPENDS = {
    "u-boot": ("recipes-bsp/u-boot/u-boot_%.bbappend", "segway:qemuall:qemuarm64-secureboot"),
    "u-boot-stm32mp": ("dynamic-layers/stm-st-stm32mp/recipes-bsp/u-boot/u-boot-stm32mp_%.bbappend", "segway"),
    "u-boot-fslc": ("dynamic-layers/freescale-layer/recipes-bsp/u-boot/u-boot-fslc_%.bbappend", "segway"),
    "u-boot-imx": ("dynamic-layers/freescale-layer/recipes-bsp/u-boot/u-boot-imx_%.bbappend", "segway"),
}
UBOOT_FILES = LAYER / "recipes-bsp/u-boot/files"


def vendor_trees() -> dict:
    """The pinned facts of the U-Boot trees the kas machines build (data/uboot-vendor-trees.yaml)."""
    import yaml
    return yaml.safe_load((Path(__file__).parent / "data" / "uboot-vendor-trees.yaml").read_text())


def recipe_fragments(recipe: str, console_locked: bool = True) -> list[Path]:
    """The fragments segway_uboot.bbclass and the recipe's bbappend put into SRC_URI, in order,
    as bitbake's parser evaluates them (the inherit is followed by hand: it names our class)."""
    from .layer import evaluate
    append, overrides = UBOOT_APPENDS[recipe]
    append = LAYER / append
    d = evaluate([LAYER / "classes/segway_uboot.bbclass", append],
                 {"OVERRIDES": overrides, "SEGWAY_LAYERDIR": str(LAYER), "UNPACKDIR": "/unpack",
                  "SEGWAY_UBOOT_CONSOLE_LOCKED": "1" if console_locked else "0"})
    found = []
    for uri in d.getVar("SRC_URI").split():
        name = uri.removeprefix("file://")
        if not name.endswith(".cfg"):
            continue
        paths = [p for p in (append.parent / "files" / name, UBOOT_FILES / name) if p.is_file()]
        if not paths:
            raise FileNotFoundError("%s: %s not in the layer" % (append.name, name))
        found.append(paths[0])
    return found


def merged_options(recipe: str, console_locked: bool = True) -> dict[str, str | None]:
    """The options of the recipe's fragments merged in SRC_URI order (later fragments win, as
    with merge_config.sh)."""
    options: dict[str, str | None] = {}
    for path in recipe_fragments(recipe, console_locked):
        options.update(read_fragment(path))
    return options
