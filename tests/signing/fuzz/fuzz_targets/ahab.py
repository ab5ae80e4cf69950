"""NXP AHAB: ``ahab verify`` on an i.MX 93 image made by SPSDK, signed by a token SRK (P-256)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from tests.signing.fuzz.mutator import Field

from .base import Input, Shop, Target, all_bytes

# ------------------------------------------------------------------------------------------------
# Layout, read with the test's own walker: containers on 1 KiB boundaries (``00 <len LE16> 87``),
# then flags, sw_version, fuse_version, num_images, signature-block offset; 128-byte image entries
# (offset, size, load, entry, flags, meta, hash, iv); the signature block (``00 <len> 90``) with the
# certificate, SRK table, signature and blob offsets from its start.


def containers(image: bytes) -> list[int]:
    return [off for off in range(0, len(image) - 16, 0x400) if image[off] == 0 and image[off + 3] == 0x87]


def _entries(image: bytes, c: int) -> list[tuple[int, int, int]]:
    """(entry offset, image offset in the file, image size)."""
    count = image[c + 11]
    out = []
    for i in range(count):
        e = c + 16 + 128 * i
        off, size = struct.unpack_from("<II", image, e)
        out.append((e, c + off, size))
    return out


# Device bytes: the ROM (ELE) reads each container whole — header, image array, signature block
# with its SRK table, signature and certificate, reserved fields included — as its length says,
# and loads each image of the array from where its entry points. Padding between the container
# and the images, and after the last image, is read by no one.


def device_bytes(image: bytes) -> list[tuple[int, int]]:
    out = []
    for c in containers(image):
        out.append((c, c + struct.unpack_from("<H", image, c + 1)[0]))
        out += [(start, start + size) for _, start, size in _entries(image, c)]
    return out


def fields(image: bytes) -> list[Field]:
    out = []
    for c in containers(image):
        out += [Field(c + 1, 2, "little", "container length"), Field(c + 11, 1, "little", "num_images"),
                Field(c + 12, 2, "little", "signature block offset"), Field(c + 14, 2, "little", "reserved")]
        for e, _, _ in _entries(image, c):
            out += [Field(e, 4, "little", "image offset"), Field(e + 4, 4, "little", "image size")]
        sb = c + struct.unpack_from("<H", image, c + 12)[0]
        if sb > c:
            out += [Field(sb + 1, 2, "little", "signature block length"),
                    Field(sb + 12, 4, "little", "signature block reserved")]
            for i, name in enumerate(("certificate", "SRK table", "signature", "blob")):
                out.append(Field(sb + 4 + 2 * i, 2, "little", f"{name} offset"))
                (rel,) = struct.unpack_from("<H", image, sb + 4 + 2 * i)
                if rel:
                    out.append(Field(sb + rel + 1, 2, "little", f"{name} length"))
                if rel and name == "signature":  # version, length, tag, then a type and three reserved bytes
                    out.insert(0, Field(sb + rel + 4, 4, "little", "signature header type and reserved"))
    return out


def hot(image: bytes) -> list[tuple[int, int]]:
    return [(c, c + struct.unpack_from("<H", image, c + 1)[0]) for c in containers(image)]


def _build(shop: Shop, case: Path) -> None:
    from tests.signing.cli import test_ahab_cli as cli_tests
    srks = [shop.key("p256", f"fuzz-ahab-srk{i}") for i in range(1, 5)]
    src = shop.root / "ahab"
    src.mkdir()
    shop.cli(["ahab", "srk", "--keys", ",".join(srks), "--out-table", str(case / "srk_table.bin"), *shop.pin])
    shop.cli(["ahab", "sign", "--in", str(cli_tests.unsigned_image(src)), "--out", str(case / "signed.bin"),
              "--srk-table", str(case / "srk_table.bin"), "--srk-index", "1", "--key", srks[0], *shop.pin])
    shutil.rmtree(src)


def _argv(shop: Shop, case: Path) -> list[str]:
    return ["ahab", "verify", "--in", str(case / "signed.bin"), "--srk-table", str(case / "srk_table.bin")]


TARGETS = [
    Target("ahab verify", (Input("signed.bin", device_bytes, fields=fields, hot=hot, weight=8),
                           # the SRK table whose hash is fused: every byte counts
                           Input("srk_table.bin", all_bytes, weight=1)),
           _build, _argv),
]
