"""Tampering with a signed FIP the way an attacker with write access to the flash would.

The ToC is walked here (header, 40-byte entries, a null entry) so the attacks do not depend on
segway-sign's own parser; entries are replaced with Debian's ``fiptool``.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

_HEADER = struct.Struct("<IIQ")
_ENTRY = struct.Struct("<16sQQQ")
# fiptool's names for the entries the attacks touch (TF-A include/tools_share/firmware_image_package.h).
UUIDS = {
    "tb-fw": "5ff9ec0b-4d22-3e4d-a544-c39d81c73f0a",
    "soc-fw": "47d4086d-4cfe-9846-9b95-2950cbbd5a00",
    "tos-fw": "05d0e189-53dc-1347-8d2b-500a4b7a3e38",
    "tos-fw-extra1": "0b70c29b-2a5a-7840-9f65-0a5682738288",
    "nt-fw": "d6d0eea7-fcea-d54b-9782-9934f234b6e4",
    "tb-fw-cert": "d6e269ea-5d63-e411-8d8c-9fbabe9956a5",
    "trusted-key-cert": "827ee890-f860-e411-a1b4-777a21b4f94c",
    "nt-fw-cert": "8ec4c1f3-5d63-e411-a7a9-87ee40b23fa7",
}


class FipAttackError(RuntimeError):
    pass


def entry_span(fip: bytes, name: str) -> tuple[int, int]:
    """(offset, size) of entry ``name`` in the FIP."""
    want = bytes.fromhex(UUIDS[name].replace("-", ""))
    pos = _HEADER.size
    while pos + _ENTRY.size <= len(fip):
        uuid, offset, size, _flags = _ENTRY.unpack_from(fip, pos)
        if uuid == bytes(16):
            break
        if uuid == want:
            return offset, size
        pos += _ENTRY.size
    raise FipAttackError(f"the FIP has no {name} entry")


def flip_entry_byte(fip: bytes, name: str, *, last: bool = False) -> bytes:
    """Flip one bit of entry ``name``: its middle byte, or its last (a certificate's signature)."""
    offset, size = entry_span(fip, name)
    if size == 0:
        raise FipAttackError(f"the {name} entry is empty")
    at = offset + (size - 1 if last else size // 2)
    out = bytearray(fip)
    out[at] ^= 0x01
    return bytes(out)


def replace_entry(fip: bytes, name: str, data: bytes) -> bytes:
    """The FIP with entry ``name`` replaced by ``data`` (``fiptool update``)."""
    with tempfile.TemporaryDirectory(prefix="segway-fip-") as tmp:
        path, blob = Path(tmp) / "fip.bin", Path(tmp) / "entry.bin"
        path.write_bytes(fip)
        blob.write_bytes(data)
        proc = subprocess.run(["fiptool", "update", f"--{name}", str(blob), str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise FipAttackError(f"fiptool update --{name} failed: {proc.stderr.strip()}")
        return path.read_bytes()


def entry(fip: bytes, name: str) -> bytes:
    offset, size = entry_span(fip, name)
    return fip[offset: offset + size]
