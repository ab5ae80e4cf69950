"""The struct-block walks of segway_sign.formats.fit.regions on trees whose structure is broken:
one-line InputErrors, never an exception from the walk itself."""

from __future__ import annotations

import struct

import pytest

from tests.fit_fixtures import make_unsigned_fit
from segway_sign.errors import InputError
from segway_sign.formats.fit import regions
from segway_sign.formats.fit.sign import payload_spans

FDT_NOP = 4


def ramdisk_length_flipped(blob: bytes) -> bytes:
    """The long fuzz run's ``fit sign`` case (unsigned.itb: bit-flip 0x1bd37.4): bit 4 of the
    length of /configurations/conf-1's ``ramdisk`` property (10 -> 26), so the walk skips the
    next node's beginning and later meets one end of node too many."""
    [(path, start, length)] = regions.value_spans(blob, "ramdisk")
    assert (path, length) == ("/configurations/conf-1", 10)
    out = bytearray(blob)
    out[start - 5] ^= 1 << 4  # the low byte of the property's length word
    return bytes(out)


def root_begin_nopped(blob: bytes) -> bytes:
    """The root node's FDT_BEGIN_NODE and its empty name replaced by FDT_NOPs: its end is unbalanced."""
    off = struct.unpack_from(">I", blob, 8)[0]
    return blob[:off] + struct.pack(">II", FDT_NOP, FDT_NOP) + blob[off + 8:]


@pytest.mark.parametrize("damage", [ramdisk_length_flipped, root_begin_nopped])
def test_unbalanced_end_of_node(damage, tmp_path):
    blob = damage(make_unsigned_fit(tmp_path / "fit").read_bytes())
    with pytest.raises(InputError, match="malformed device tree: unbalanced end of node"):
        regions.value_spans(blob, "data")
    with pytest.raises(InputError, match="unbalanced end of node"):
        regions.property_spans(blob, "data")
    with pytest.raises(InputError, match="unbalanced end of node"):
        regions.node_names(blob)
    assert payload_spans(blob, minimum=1) == []  # fit sign's copy-ahead guess: nothing, sign_fit says why
