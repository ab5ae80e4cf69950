"""i.MX Image Vector Table (IVT) and boot data: find them and derive what HAB authenticates.

IVT (32 bytes): header ``D1 0020 4x`` then little-endian words entry, reserved, dcd, boot_data, self,
csf, reserved (nxp-imx/imx-mkimage ``flash_header_v2_t``). Boot data: start, size, plugin.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import InputError

IVT_TAG = 0xD1
IVT_SIZE = 0x20


@dataclass(frozen=True)
class Ivt:
    offset: int  # in the file
    version: int
    entry: int
    dcd: int
    boot_data: int
    self_addr: int
    csf: int
    reserved1: int = 0  # imx-mkimage (ROM v1): the second loader's offset from this IVT
    reserved2: int = 0

    @property
    def csf_offset(self) -> int:
        """File offset the CSF pointer refers to (same mapping as the IVT itself)."""
        return self.offset + self.csf - self.self_addr

    def file_offset(self, address: int) -> int:
        return self.offset + address - self.self_addr


def parse_ivt(image: bytes, offset: int) -> Ivt:
    if offset < 0 or offset + IVT_SIZE > len(image):
        raise InputError(f"no IVT at offset 0x{offset:x}: the image is too short")
    tag, length, version = struct.unpack_from(">BHB", image, offset)
    if tag != IVT_TAG or length != IVT_SIZE or version & 0xF0 != 0x40:
        raise InputError(f"no IVT at offset 0x{offset:x} (header {image[offset:offset + 4].hex()})")
    entry, reserved1, dcd, boot_data, self_addr, csf, reserved2 = struct.unpack_from("<7I", image, offset + 4)
    return Ivt(offset, version, entry, dcd, boot_data, self_addr, csf, reserved1, reserved2)


def find_ivts(image: bytes, limit: int = 8) -> list[Ivt]:
    """All plausible IVTs (4-byte aligned, ``self`` consistent with the layout), in file order."""
    found: list[Ivt] = []
    pos = image.find(b"\xd1\x00\x20", 0)
    while pos != -1 and len(found) < limit:
        if pos % 4 == 0:
            try:
                ivt = parse_ivt(image, pos)
            except InputError:
                ivt = None
            if ivt is not None and ivt.self_addr and ivt.entry:
                found.append(ivt)
        pos = image.find(b"\xd1\x00\x20", pos + 1)
    return found


@dataclass(frozen=True)
class BootData:
    start: int
    size: int
    plugin: int


def boot_data(image: bytes, ivt: Ivt) -> BootData | None:
    """The boot data the IVT points to, or None when it lies outside the file (i.MX8M SLD IVT)."""
    if not ivt.boot_data:
        return None
    off = ivt.file_offset(ivt.boot_data)
    if off < 0 or off + 12 > len(image):
        return None
    return BootData(*struct.unpack_from("<3I", image, off))
