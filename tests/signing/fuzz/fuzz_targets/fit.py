"""U-Boot FIT images: ``fit verify`` (signed FIT, embedded and external data; control DTB) and
``fit sign`` (unsigned FIT, PIN file)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fit_fixtures

from . import fdt
from .base import Input, Shop, Target, run

KERNEL = 40_000


def _pki(shop: Shop):
    """The FIT key in the token and the U-Boot control DTB that holds its public half."""
    def make(where: Path):
        uri = shop.key("rsa2048", "fuzz-fit")
        ctl = where / "ctl.dtb"
        shop.cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(fit_fixtures.empty_dtb(where / "empty.dtb")),
                  "--out", str(ctl), "--key-name-hint", "dev", *shop.pin])
        return uri, ctl
    return shop.once("fit-pki", make)


def _unsigned(shop: Shop, external: bool) -> Path:
    def make(where: Path):
        unsigned = fit_fixtures.make_unsigned_fit(where, kernel_size=KERNEL)
        if external:  # the same tree, payloads after it (mkimage -E), as SPL-loaded FITs are made
            run(["mkimage", "-E", "-f", "fit.its", "external.itb"], where,
                env=dict(os.environ, SOURCE_DATE_EPOCH=fit_fixtures.EPOCH))
            return where / "external.itb"
        return unsigned
    return shop.once("fit-unsigned-external" if external else "fit-unsigned", make)


def _build_signed(external: bool):
    def build(shop: Shop, case: Path) -> None:
        uri, ctl = _pki(shop)
        shop.cli(["fit", "sign", "--key", uri, "--in", str(_unsigned(shop, external)), "--out",
                  str(case / "fit.itb"), *shop.pin])
        shutil.copy(ctl, case / "ctl.dtb")
    return build


def _build_unsigned(shop: Shop, case: Path) -> None:
    _pki(shop)
    shutil.copy(_unsigned(shop, False), case / "unsigned.itb")
    shutil.copy(shop.token.pin_file, case / "user.pin")


# ------------------------------------------------------------------------------------------------
# Device bytes of a signed FIT.
#
# U-Boot walks the whole structure block (every node and property header) to find nodes, reads the
# header (totalsize places external data: data-offset counts from the 4-byte aligned end of the
# tree), the strings block (property names), the properties of the nodes it looks up, and the
# images' data. So: everything in [0, totalsize), plus each image's external data, except:
#
# - bytes after the tree and between external payloads (alignment padding, anything appended):
#   nothing reads them;
# - the header's boot_cpuid_phys and the memory reservation block: only a kernel booted with this
#   tree as its DTB would use them; fdt_check_header() bounds-checks off_mem_rsvmap, no more;
# - values of signature-node properties U-Boot never looks up: boot/image-fit-sig.c reads algo,
#   padding, key-name-hint, value and the second cell of hashed-strings (its first cell, the
#   strings offset, is taken as 0); hashed-nodes (the signed node list is rebuilt from the
#   configuration), timestamp, signer-name, signer-version, comment and sign-images are for
#   people and for mkimage, at most printed. Their names too, where the strings block holds them
#   after the hashed strings (they were added when the signature was written): U-Boot compares
#   them with the names it looks up and finds no match.
#
# libfdt treats every header version from 17 up, and every last_comp_version up to 17, alike
# (fdt_check_header() only compares them): ``canonical`` maps those to one value.

UNREAD_SIGNATURE_PROPS = ("hashed-nodes", "timestamp", "signer-name", "signer-version", "comment", "sign-images")
BOOT_CPUID_PHYS = 0x1C


def _is_signature(node: str) -> bool:
    return node.rsplit("/", 1)[-1].startswith("signature")


def device_bytes(blob: bytes) -> list[tuple[int, int]]:
    tree = fdt.parse(blob)
    size = tree.header["totalsize"]
    h = tree.header
    holes = [(BOOT_CPUID_PHYS, BOOT_CPUID_PHYS + 4), (h["off_mem_rsvmap"], h["off_dt_struct"])]
    unread, read_names, hashed_strings = set(), set(), 0
    for p in tree.props:
        if _is_signature(p.node) and p.name in UNREAD_SIGNATURE_PROPS:
            holes.append((p.value, p.end))
            unread.add(p.name)
        elif _is_signature(p.node) and p.name == "hashed-strings":
            holes += [(p.value, p.value + 4), (p.value + 8, p.end)]
            hashed_strings = int.from_bytes(blob[p.value + 4:p.value + 8], "big")
        else:
            read_names.add(p.name)
    strings = h["off_dt_strings"]
    pos = strings + hashed_strings
    for name in blob[pos:strings + h["size_dt_strings"]].split(b"\0"):
        if name and name.decode(errors="replace") in unread - read_names:
            holes.append((pos, pos + len(name)))
        pos += len(name) + 1
    out, pos = [], 0
    for a, b in sorted(holes):
        out.append((pos, a))
        pos = max(pos, b)
    out.append((pos, size))
    by_node: dict[str, dict[str, bytes]] = {}
    for p in tree.props:
        by_node.setdefault(p.node, {})[p.name] = blob[p.value:p.end]
    for node, props in by_node.items():
        if node.startswith("/images/") and node.count("/") == 2 and "data-size" in props:
            length = int.from_bytes(props["data-size"], "big")
            if "data-position" in props:
                start = int.from_bytes(props["data-position"], "big")
            else:
                start = ((size + 3) & ~3) + int.from_bytes(props["data-offset"], "big")
            out.append((start, start + length))
    return [(a, b) for a, b in out if b > a]


def canonical(blob: bytes) -> bytes:
    if len(blob) < 0x1C:
        return blob
    out = bytearray(blob)
    version, last_comp = int.from_bytes(blob[0x14:0x18], "big"), int.from_bytes(blob[0x18:0x1C], "big")
    if version >= 17:
        out[0x14:0x18] = (17).to_bytes(4, "big")
    if last_comp <= 17:
        out[0x18:0x1C] = (16).to_bytes(4, "big")
    return bytes(out)


FIT = Input("fit.itb", device_bytes, fields=fdt.length_fields, hot=fdt.metadata, weight=4, canonical=canonical)
# The control DTB is U-Boot's own (inside the signed U-Boot binary): the trust anchor the FIT is
# checked against, not a signed artifact. Mutated, it must still never produce a traceback.
CONTROL_DTB = Input("ctl.dtb", None, fields=fdt.length_fields, weight=1)


def _verify_argv(shop: Shop, case: Path) -> list[str]:
    return ["fit", "verify", "--dtb", str(case / "ctl.dtb"), "--in", str(case / "fit.itb")]


def _sign_argv(shop: Shop, case: Path) -> list[str]:
    uri, _ = _pki(shop)
    return ["fit", "sign", "--key", uri, "--pin-file", str(case / "user.pin"), "--in", str(case / "unsigned.itb"),
            "--out", str(case / "out.itb")]


TARGETS = [
    Target("fit verify", (FIT, CONTROL_DTB), _build_signed(False), _verify_argv),
    Target("fit verify (external data)", (FIT, CONTROL_DTB), _build_signed(True), _verify_argv),
    Target("fit sign", (Input("unsigned.itb", None, fields=fdt.length_fields, hot=fdt.metadata, weight=6),
                        # A FIFO is a normal PIN file (--pin-file <(…)): it is read, not refused.
                        Input("user.pin", None, text="pin", weight=1, specials=("device", "directory", "missing"))),
           _build_unsigned, _sign_argv, token=True),
]
