"""STM32MP FSBL images: ``stm32 verify`` on a header v1 image (STM32MP15, mkimage's) and a header
v2.2 image with a key table (STM32MP13/MP2)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from tests.signing.fuzz.mutator import Field

from .base import Input, Shop, Target, all_bytes

V1_SIZE, V2_BASE = 0x100, 0x80


# ------------------------------------------------------------------------------------------------
# Device bytes: the ROM reads the whole header (magic, signature, checksum, and from offset 72 the
# signed fields, padding and extension headers included) and image_length payload bytes after it,
# which it loads and runs. Bytes after the payload (file padding) are never read.


def _header_size(data: bytes) -> int:
    if struct.unpack_from("<I", data, 72)[0] >> 16 == 1:
        return V1_SIZE
    return V2_BASE + struct.unpack_from("<I", data, 104)[0]


def device_bytes(data: bytes) -> list[tuple[int, int]]:
    return [(0, _header_size(data) + struct.unpack_from("<I", data, 76)[0])]


def fields(data: bytes) -> list[Field]:
    out = [Field(76, 4, "little", "image_length"), Field(72, 4, "little", "header_version"),
           Field(68, 4, "little", "checksum"), Field(104, 4, "little", "ecdsa_algorithm/extension length")]
    if _header_size(data) != V1_SIZE:
        pos = V2_BASE
        while pos + 8 <= _header_size(data):
            size = struct.unpack_from("<I", data, pos + 4)[0]
            out.append(Field(pos + 4, 4, "little", f"extension header at 0x{pos:x} length"))
            if size < 8:
                break
            pos += size
    return out


def hot(data: bytes) -> list[tuple[int, int]]:
    return [(0, _header_size(data))]


def _v1(shop: Shop, case: Path) -> None:
    from tests.signing.cli import test_stm32_cli as cli_tests
    uri = shop.key("p256", "fuzz-stm32")
    image = cli_tests.mkimage(case)
    shop.cli(["stm32", "sign", "--key", uri, "--in", str(image), "--out", str(case / "bl2-signed.stm32"),
              "--image-version", "3", *shop.pin])
    for name in ("bl2.bin", "bl2.stm32"):
        (case / name).unlink()
    fuses = json.loads(shop.cli(["stm32", "pkh", "--key", uri, "--json", *shop.pin]))
    (case / "pkh.txt").write_text(fuses["hash"] + "\n")


def _v22(shop: Shop, case: Path) -> None:
    uris = [shop.key("p256", f"fuzz-stm32-table{i}") for i in range(3)]
    table = [a for uri in uris for a in ("--keys", uri)]
    raw = shop.root / "bl2-v22.bin"
    raw.write_bytes(os.urandom(3000))
    shop.cli(["stm32", "sign", "--key", uris[1], "--in", str(raw), "--out", str(case / "bl2-signed.stm32"),
              "--entry", "0x2ffe0000", "--load", "0x2ffe0000", "--header-version", "2.2", *table, *shop.pin])
    fuses = json.loads(shop.cli(["stm32", "pkh", "--key", uris[0], "--header-version", "2", *table, "--json",
                                 *shop.pin]))
    (case / "pkh.txt").write_text(fuses["hash"] + "\n")


def _argv(shop: Shop, case: Path) -> list[str]:
    return ["stm32", "verify", "--in", str(case / "bl2-signed.stm32"), "--pkh-file", str(case / "pkh.txt")]


IMAGE = Input("bl2-signed.stm32", device_bytes, fields=fields, hot=hot, weight=6)
# The expected PKH is what is fused in the SoC: every byte of its value counts, whatever its
# spelling (hex text, any case, with 0x or spaces around, or the 32 bytes themselves).
def pkh_value(valid: bytes, data: bytes) -> bytes:
    if len(data) == 32:
        return data
    try:
        value = bytes.fromhex(data.decode("ascii").strip().removeprefix("0x"))
    except ValueError:
        return data
    return value if len(value) == 32 else data


PKH = Input("pkh.txt", all_bytes, text="hex", weight=1, canonical=pkh_value)

TARGETS = [
    Target("stm32 verify", (IMAGE, PKH), _v1, _argv),
    Target("stm32 verify (header v2.2)", (IMAGE, PKH), _v22, _argv),
]
