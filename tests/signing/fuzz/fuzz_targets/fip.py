"""TF-A FIP with TBBR certificates: ``fip verify`` on a FIP made by fiptool and signed with token keys
(P-256): STM32MP1's chain (the ROT key in the token) and TF-A's generic chain (``--cot generic``, all
six keys in the token, checked against the ROTPK hash)."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
from pathlib import Path

from tests.signing.fuzz.mutator import Field, der_length_fields

from .base import Input, Shop, Target
from .stm32 import PKH

ENTRY = 40  # uuid(16) offset(8) size(8) flags(8)

# ------------------------------------------------------------------------------------------------
# Layout, read with the test's own walker: ToC header (name 0xAA640001, serial, flags), then ToC
# entries up to the one with a null UUID.


def entries(fip: bytes) -> list[tuple[int, int, int]]:
    """(entry offset, data offset, data size) of each ToC entry, the null terminator included."""
    out, pos = [], 16
    while pos + ENTRY <= len(fip):
        off, size = struct.unpack_from("<QQ", fip, pos + 16)
        out.append((pos, off, size))
        if fip[pos:pos + 16] == bytes(16):
            break
        pos += ENTRY
    return out


# Device bytes: BL2 (drivers/io/io_fip.c) reads the ToC header and walks the entries to the null
# one; it loads each image and certificate where its entry points, and parses every certificate
# (mbed TLS reads all of the DER). Not acted on:
# - the ToC header's flags, and each entry's flags: io_fip never looks at them;
# - the null entry's offset, size and flags: only its UUID ends the walk;
# - padding between images (fiptool --align) and after the last one.
# The header's serial number is only tested for being non-zero (``canonical``).


def device_bytes(fip: bytes) -> list[tuple[int, int]]:
    table = entries(fip)
    out = [(0, 8)]
    for pos, off, size in table[:-1]:
        out += [(pos, pos + 32), (off, off + size)]
    null = table[-1][0]
    out.append((null, null + 16))
    return out


def canonical(valid: bytes, fip: bytes) -> bytes:
    if len(fip) >= 8 and fip[4:8] != bytes(4):
        return fip[:4] + b"\x01\0\0\0" + fip[8:]
    return fip


def fields(fip: bytes) -> list[Field]:
    out = []
    for pos, off, size in entries(fip):
        out += [Field(pos + 16, 8, "little", "ToC entry offset"), Field(pos + 24, 8, "little", "ToC entry size")]
        data = fip[off:off + size]
        if data[:1] == b"\x30":  # a certificate: its DER lengths too
            out += [Field(off + f.offset, f.width, der=True, name=f.name) for f in der_length_fields(data, limit=60)]
    return out


def hot(fip: bytes) -> list[tuple[int, int]]:
    table = entries(fip)
    out = [(0, table[-1][0] + ENTRY)]
    out += [(off, off + size) for _, off, size in table[:-1] if fip[off:off + 1] == b"\x30"]
    return out


def _build(shop: Shop, case: Path) -> None:
    from tests.signing.cli import test_fip_cli as cli_tests
    uri = shop.key("p256", "fuzz-fip-rot")
    src = shop.root / "fip"
    src.mkdir()
    imgs = cli_tests.images(src)
    unsigned = src / "fip.bin"
    subprocess.run(["fiptool", "create", *[a for n, p in imgs.items() for a in (f"--{n}", str(p))], str(unsigned)],
                   check=True, capture_output=True, timeout=60)
    shop.cli(["fip", "sign", "--rot-key", uri, "--fip", str(unsigned), "--out", str(case / "fip.bin"),
              "--tfw-nvctr", "2", "--ntfw-nvctr", "3", *shop.pin])
    fuses = json.loads(shop.cli(["stm32", "pkh", "--key", uri, "--json", *shop.pin]))
    (case / "pkh.txt").write_text(fuses["hash"] + "\n")


def _argv(shop: Shop, case: Path) -> list[str]:
    return ["fip", "verify", "--fip", str(case / "fip.bin"), "--pkh-file", str(case / "pkh.txt")]


def _build_generic(shop: Shop, case: Path) -> None:
    from tests.signing.cli import test_fip_generic_cli as cli_tests
    keys = []
    for option in cli_tests.KEY_OPTIONS:
        keys += [f"--{option}", shop.key("p256", f"fuzz-fip-generic-{option}")]
    src = shop.root / "fip-generic"
    src.mkdir(exist_ok=True)
    imgs = cli_tests.images(src)
    unsigned = src / "fip.bin"
    subprocess.run(["fiptool", "create", *[a for n, p in imgs.items() for a in (f"--{n}", str(p))], str(unsigned)],
                   check=True, capture_output=True, timeout=60)
    report = json.loads(shop.cli(["fip", "sign", "--cot", "generic", *keys, "--fip", str(unsigned), "--out",
                                  str(case / "fip.bin"), "--tfw-nvctr", "2", "--ntfw-nvctr", "2", "--json", *shop.pin]))
    (case / "rotpk_hash.txt").write_text(report["rot_pkh"] + "\n")


def _argv_generic(shop: Shop, case: Path) -> list[str]:
    return ["fip", "verify", "--cot", "generic", "--fip", str(case / "fip.bin"), "--rot-pkh",
            str(case / "rotpk_hash.txt")]


# The ROTPK hash BL1/BL2 are built with: every byte of its value counts, as the PKH's.
ROTPK_HASH = dataclasses.replace(PKH, path="rotpk_hash.txt")

TARGETS = [
    Target("fip verify", (Input("fip.bin", device_bytes, fields=fields, hot=hot, weight=8, canonical=canonical), PKH),
           _build, _argv),
    Target("fip verify --cot generic",
           (Input("fip.bin", device_bytes, fields=fields, hot=hot, weight=8, canonical=canonical), ROTPK_HASH),
           _build_generic, _argv_generic),
]
