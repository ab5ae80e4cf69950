"""U-Boot FIT images: ``fit verify`` (signed FIT, embedded and external data; control DTB) and
``fit sign`` (unsigned FIT, PIN file)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests import fit_fixtures

from . import fdt
from .base import DeviceView, Input, Shop, Target, run

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
# What U-Boot acts on in a signed FIT. Its structure decides too much for byte ranges (a length
# that swallows an unread property, a string property whose value grows by a padding byte), so
# FITs declare a view instead: what U-Boot reads, as it reads it; an accepted FIT must give the
# valid FIT's view.
#
# - the signed nodes (root, the configuration, its images and their hash nodes): every property
#   record byte for byte (tag, length, name offset, value, padding), since U-Boot hashes them;
#   and the strings block up to hashed-strings. Except the properties the configuration's hash
#   leaves out (data, data-size, data-offset, data-position): their names and values as U-Boot
#   reads them — data as long as its length says, the others as the 4 bytes at the value, whatever
#   the length (fit_image_get_data_offset() and friends do not look at it);
# - the other nodes (/images, /configurations): the node names and property values (a string
#   property such as ``default`` up to its NUL);
# - the configuration's signature nodes (their names count up to the "signature" prefix U-Boot
#   matches): the first algo and padding (up to the NUL), value, and the second cell of
#   hashed-strings (boot/image-fit-sig.c takes the first, the strings offset, as 0). U-Boot checks
#   a configuration against the required key node of its control DTB, so key-name-hint is only
#   printed; hashed-nodes (the signed node list is rebuilt from the configuration), timestamp,
#   signer-name, signer-version, comment and sign-images are for people and mkimage;
# - each image's external data (data-offset counts from the tree's end rounded up to 4 bytes);
# - the header as libfdt takes it: the magic, and a tree that ends within the file.
#
# Not in the view, so never acted on: the memory reservation block and boot_cpuid_phys (only a
# kernel booted with this tree as its DTB would use them), free space between and after the
# blocks, padding between external payloads and after them.

READ_SIGNATURE_PROPS = ("algo", "padding", "value", "hashed-strings")
UNHASHED = ("data-size", "data-offset", "data-position")  # and data (boot/image-fit-sig.c exc_prop)
STRING_PROPS = ("algo", "padding", "default", "description")


def _is_signature(node: str) -> bool:
    return node.startswith("/configurations/") and node.rsplit("/", 1)[-1].startswith("signature")


def _signed(node: str) -> bool:
    """A node U-Boot hashes for the configuration signature (the fixtures' configuration loads
    every image)."""
    return node == "/" or (node.startswith(("/images/", "/configurations/")) and not _is_signature(node))


def _cstring(value: bytes) -> bytes:
    return value.split(b"\0", 1)[0]


def view(blob: bytes) -> list:
    tree = fdt.parse(blob)
    h = tree.header
    out: list = [("magic", h["magic"]), ("tree within the file", h["totalsize"] <= len(blob))]
    for path, _ in tree.nodes:
        out.append(("node", path.rsplit("/", 1)[0] + "/signature" if _is_signature(path) else path))
    seen: set[tuple[str, str]] = set()
    hashed_strings, external = 0, {}
    for p in tree.props:
        value = blob[p.value:p.end]
        if _signed(p.node) and p.name in UNHASHED:
            out.append(("unhashed", p.node, p.name, blob[p.value:p.value + 4]))
        elif _signed(p.node) and p.name == "data":
            out.append(("unhashed", p.node, p.name, value))
        elif _signed(p.node):
            out.append(("signed", p.node, p.name, blob[p.offset:(p.end + 3) & ~3]))
        elif _is_signature(p.node):
            if p.name in READ_SIGNATURE_PROPS and (p.node, p.name) not in seen:
                seen.add((p.node, p.name))
                if p.name == "hashed-strings":
                    hashed_strings = int.from_bytes(value[4:8], "big") if len(value) >= 8 else -1
                    value = hashed_strings
                out.append(("signature", p.name, _cstring(value) if p.name in STRING_PROPS else value))
        else:
            out.append(("prop", p.node, p.name, _cstring(value) if p.name in STRING_PROPS else value))
        if p.node.startswith("/images/") and p.name in UNHASHED:
            external.setdefault(p.node, {})[p.name] = int.from_bytes(blob[p.value:p.value + 4], "big")
    strings = h["off_dt_strings"]
    out.append(("hashed strings", blob[strings:strings + max(hashed_strings, 0)]))
    for node, ext in sorted(external.items()):
        start = ext["data-position"] if "data-position" in ext else \
            ((h["totalsize"] + 3) & ~3) + ext.get("data-offset", 0)
        out.append(("external data", node, blob[start:start + ext.get("data-size", 0)]))
    return out


FIT = Input("fit.itb", DeviceView(view), fields=fdt.length_fields, hot=fdt.metadata, weight=4)
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
