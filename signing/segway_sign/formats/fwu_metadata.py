"""Arm PSA firmware-update (FWU) metadata, version 1: which firmware bank TF-A boots.

Layout (Arm DEN0118 "Platform Security Firmware Update for the A-profile", TF-A
include/drivers/fwu/fwu_metadata.h), little endian, packed::

    crc_32, version, active_index, previous_active_index   4 x uint32
    img_entry[images]: img_type_uuid, location_uuid           2 x 16 bytes
        img_props[banks]: img_uuid, accepted, reserved        16 + 2 x 4 bytes

The CRC-32 (zlib's) covers everything after its own field. UUIDs are in the GUID byte order GPT
uses, so a bank's ``img_uuid`` is the unique partition GUID TF-A looks the bank up by. STM32MP1
(meta-st-stm32mp's ``fw-update``) has one image (the FIP) in two banks (fip-a, fip-b).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from ..errors import InputError

VERSION = 1
_HEADER = struct.Struct("<IIII")
_BANK = struct.Struct("<16sII")


@dataclass(frozen=True)
class ImageEntry:
    type_uuid: uuid.UUID
    location_uuid: uuid.UUID
    bank_uuids: tuple[uuid.UUID, ...]  # one per bank: the partition holding that bank's copy


@dataclass(frozen=True)
class FwuMetadata:
    active_index: int
    previous_active_index: int
    images: tuple[ImageEntry, ...]


def size(images: int, banks: int) -> int:
    return _HEADER.size + images * (32 + banks * _BANK.size)


def parse(data: bytes, *, images: int = 1, banks: int = 2) -> FwuMetadata:
    """Parse and check a version 1 metadata blob (trailing padding is allowed)."""
    need = size(images, banks)
    if len(data) < need:
        raise InputError(f"FWU metadata is {len(data)} bytes, {need} expected for {images} image(s) in {banks} banks")
    crc, version, active, previous = _HEADER.unpack_from(data)
    if version != VERSION:
        raise InputError(f"FWU metadata version {version} is not supported (expected {VERSION})")
    if zlib.crc32(data[4:need]) != crc:
        raise InputError("FWU metadata CRC-32 does not match its content")
    if active >= banks or previous >= banks:
        raise InputError(f"FWU metadata names bank {max(active, previous)}, but there are {banks}")
    entries, pos = [], _HEADER.size
    for _ in range(images):
        type_uuid = uuid.UUID(bytes_le=data[pos:pos + 16])
        location = uuid.UUID(bytes_le=data[pos + 16:pos + 32])
        pos += 32
        bank_uuids = []
        for _ in range(banks):
            raw, _accepted, _reserved = _BANK.unpack_from(data, pos)
            bank_uuids.append(uuid.UUID(bytes_le=raw))
            pos += _BANK.size
        entries.append(ImageEntry(type_uuid, location, tuple(bank_uuids)))
    return FwuMetadata(active, previous, tuple(entries))
