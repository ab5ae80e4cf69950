"""dm-verity: ``verity verify`` on the output of ``verity sign`` (separate and appended layouts), the
root hash signed by a token RSA key."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from tests.signing.fuzz.mutator import Field, der_length_fields

from .base import Input, Shop, Target, all_bytes

BLOCKS = 300  # data blocks of 4 KiB: two tree levels


# ------------------------------------------------------------------------------------------------
# Device bytes. On the device verity.env, the root hash file and its signature sit in the signed
# initramfs; the initramfs parses every byte of verity.env and compares the root hash file whole,
# veritysetup hands the signature file whole to the kernel, which parses all of it. So: all bytes.
#
# The kernel reads every data block and every hash block of the tree (each hash block is hashed
# whole, padding included, into its parent). It does not read the superblock — the table gives
# every parameter (veritysetup --no-superblock) — nor the bytes between the superblock and the
# first hash block, nor anything after the tree or after the data. Where these files lie is read
# from the valid files themselves (the superblock).


def _build(appended: bool):
    def build(shop: Shop, case: Path) -> None:
        uri, cert = _key(shop)
        (case / "certs").mkdir()
        (case / "certs" / "verity.pem").write_bytes(cert.read_bytes())
        image = case / "rootfs.img"
        image.write_bytes(os.urandom(BLOCKS * 4096))
        shop.cli(["verity", "sign", "--key", uri, "--cert", str(cert), "--in", str(image), "--out-dir",
                  str(case / "out"), "--salt", "5e" * 32, *(["--appended"] if appended else []), *shop.pin])
        if appended:
            image.unlink()
    return build


def _key(shop: Shop) -> tuple[str, Path]:
    uris, certs = shop.token_certs()
    return uris["verity"], certs / "verity.pem"


def _argv(shop: Shop, case: Path) -> list[str]:
    return ["verity", "verify", "--certs", str(case / "certs"), str(case / "out")]


def _inputs(layout: str) -> list[Input]:
    env = "out/verity.env"
    files = {"separate": [("out/rootfs.hashtree", "hash", 3), ("rootfs.img", "data", 2)],
             "appended": [("out/rootfs.verity.img", "image", 5)]}[layout]
    inputs = [Input(env, all_bytes, text="env", weight=4),
              Input("out/rootfs.roothash", all_bytes, text="hex", weight=1),
              Input("out/rootfs.roothash.p7s", all_bytes, fields=der_length_fields, weight=3),
              # the trusted certificate: in the kernel's keyring on the device, a trust anchor
              Input("certs/verity.pem", None, text="pem", weight=1)]
    for path, role, weight in files:
        inputs.append(Input(path, _tree_device(role), fields=_tree_fields(role), hot=_tree_hot(role), weight=weight))
    return inputs


def _tree_device(role: str):
    """Device bytes of a data or hash file, from the parameters the valid file itself carries (the
    superblock at the hash area's start) or, for the data image, its whole size."""
    def device(data: bytes) -> list[tuple[int, int]]:
        if role == "data":
            return [(0, len(data) // 4096 * 4096)]
        offset = _superblock_offset(data, role)
        dbs, hbs, blocks = struct.unpack_from("<IIQ", data, offset + 64)
        start = (offset + 512 + hbs - 1) // hbs * hbs  # the tree starts at the next hash block
        out = [(start, _tree_end(start, blocks, hbs))]
        if role == "image":
            out.insert(0, (0, blocks * dbs))
        return out
    return device


def _superblock_offset(data: bytes, role: str) -> int:
    """The superblock (cryptsetup struct verity_sb): at 0 in a hash file, after the data padded to
    a hash block in an appended image."""
    return 0 if role == "hash" else next(o for o in range(0, len(data), 4096) if data[o:o + 8] == b"verity\0\0")


def _tree_end(start: int, blocks: int, hbs: int) -> int:
    per_block, count, total = hbs // 32, blocks, 0
    while True:
        count = (count + per_block - 1) // per_block
        total += count
        if count == 1:
            return start + total * hbs


def _tree_fields(role: str):
    def fields(data: bytes) -> list[Field]:
        if role == "data":
            return []
        offset = _superblock_offset(data, role)
        return [Field(offset + 64, 4, "little", "superblock data block size"),
                Field(offset + 68, 4, "little", "superblock hash block size"),
                Field(offset + 72, 8, "little", "superblock data blocks"),
                Field(offset + 80, 2, "little", "superblock salt size")]
    return fields


def _tree_hot(role: str):
    def hot(data: bytes) -> list[tuple[int, int]]:
        if role == "data":
            return [(0, len(data))]
        offset = _superblock_offset(data, role)
        return [(offset, len(data))]
    return hot


TARGETS = [
    Target("verity verify", tuple(_inputs("separate")), _build(False), _argv),
    Target("verity verify (appended)", tuple(_inputs("appended")), _build(True), _argv),
]
