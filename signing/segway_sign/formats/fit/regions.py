"""The byte regions a FIT configuration signature covers.

A read-only walk of the FDT struct block that reproduces U-Boot's ``fdt_find_regions()``
(boot/fdt_region.c): the same state machine decides which tokens are hashed, so signer and
verifier agree byte for byte. The spec (fit-signing §1.4) describes the algorithm.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from ...errors import InputError

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
FDT_MAX_DEPTH = 32
# Data may live outside the tree (mkimage -E); these never enter a configuration hash.
EXCLUDED_PROPS = frozenset({"data", "data-size", "data-position", "data-offset"})


@dataclass(frozen=True)
class Header:
    magic: int
    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    off_mem_rsvmap: int
    version: int
    last_comp_version: int
    boot_cpuid_phys: int
    size_dt_strings: int
    size_dt_struct: int

    @classmethod
    def parse(cls, blob: bytes | bytearray) -> "Header":
        if len(blob) < 40:
            raise InputError(f"not a device tree: {len(blob)} bytes is shorter than an FDT header")
        hdr = cls(*struct.unpack_from(">10I", blob, 0))
        if hdr.magic != FDT_MAGIC:
            raise InputError(f"not a device tree/FIT (magic {hdr.magic:#010x}, expected {FDT_MAGIC:#010x})")
        if hdr.version < 17:
            raise InputError(f"FDT version {hdr.version} is not supported (need 17)")
        if hdr.totalsize > len(blob):
            raise InputError(f"truncated device tree: header says {hdr.totalsize} bytes, file has {len(blob)}")
        if hdr.last_comp_version > 17:
            raise InputError(f"FDT last compatible version {hdr.last_comp_version} is not supported (need <= 17)")
        for name, off, size in (("struct", hdr.off_dt_struct, hdr.size_dt_struct),
                                ("strings", hdr.off_dt_strings, hdr.size_dt_strings)):
            if off + size > hdr.totalsize or off < 40:
                raise InputError(f"malformed device tree: {name} block [{off}, +{size}) outside totalsize {hdr.totalsize}")
        if hdr.off_dt_struct % 4 or hdr.size_dt_struct % 4:
            raise InputError("malformed device tree: the struct block is not 4-byte aligned")
        struct_end, strings_end = hdr.off_dt_struct + hdr.size_dt_struct, hdr.off_dt_strings + hdr.size_dt_strings
        if hdr.off_dt_struct < strings_end and hdr.off_dt_strings < struct_end:
            raise InputError("malformed device tree: the struct and strings blocks overlap")
        hdr._check_reserve_map(blob)
        return hdr

    def _check_reserve_map(self, blob: bytes | bytearray) -> None:
        """The memory reservation map must end (a zero-size entry) inside the tree and before the
        struct and strings blocks it precedes: libfdt trusts it when it moves or grows a tree."""
        off = self.off_mem_rsvmap
        if off % 8 or off < 40:
            raise InputError(f"malformed device tree: reservation map offset {off} is not 8-byte aligned after the header")
        limit = self.totalsize
        for block in (self.off_dt_struct, self.off_dt_strings):
            if block >= off:
                limit = min(limit, block)
        while True:
            if off + 16 > limit:
                raise InputError("malformed device tree: the memory reservation map has no end")
            if not any(blob[off + 8:off + 16]):
                return
            off += 16


class _Walker:
    def __init__(self, blob: bytes | bytearray, hdr: Header):
        self.blob, self.hdr = blob, hdr
        self.base, self.end = hdr.off_dt_struct, hdr.off_dt_struct + hdr.size_dt_struct

    def u32(self, rel: int) -> int:
        pos = self.base + rel
        if pos + 4 > self.end:
            raise InputError("malformed device tree: struct block ends inside a token")
        return struct.unpack_from(">I", self.blob, pos)[0]

    def next_tag(self, rel: int) -> tuple[int, int, str | None]:
        """(tag, offset of the next token, node or property name)."""
        tag = self.u32(rel)
        if tag == FDT_BEGIN_NODE:
            start = self.base + rel + 4
            nul = self.blob.find(b"\0", start, self.end)
            if nul < 0:
                raise InputError("malformed device tree: unterminated node name")
            name = bytes(self.blob[start:nul]).decode("utf-8", errors="replace")
            return tag, _align4(nul + 1 - self.base), name
        if tag == FDT_PROP:
            length, nameoff = self.u32(rel + 4), self.u32(rel + 8)
            nxt = _align4(rel + 12 + length)
            if self.base + nxt > self.end:
                raise InputError("malformed device tree: property value runs past the struct block")
            return tag, nxt, self.string(nameoff)
        if tag in (FDT_END_NODE, FDT_NOP, FDT_END):
            return tag, rel + 4, None
        raise InputError(f"malformed device tree: unknown token {tag:#x} at struct offset {rel:#x}")

    def string(self, nameoff: int) -> str:
        if nameoff >= self.hdr.size_dt_strings:
            raise InputError(f"malformed device tree: property name offset {nameoff} outside the strings block")
        start = self.hdr.off_dt_strings + nameoff
        nul = self.blob.find(b"\0", start, self.hdr.off_dt_strings + self.hdr.size_dt_strings)
        if nul < 0:
            raise InputError("malformed device tree: unterminated property name")
        return bytes(self.blob[start:nul]).decode("utf-8", errors="replace")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def find_regions(blob: bytes | bytearray, include: set[str] | frozenset[str], add_string_tab: bool,
                 exclude_props: frozenset[str] = EXCLUDED_PROPS) -> list[tuple[int, int]]:
    """(absolute offset, size) regions for the node paths in ``include``, as U-Boot computes them."""
    hdr = Header.parse(blob)
    walker = _Walker(blob, hdr)
    regions: list[list[int]] = []  # [absolute offset, size]
    start = -1
    want = 0
    stack: list[int] = []
    path: list[str] = []
    root_closed = False
    offset, nextoffset = 0, 0
    while True:
        offset = nextoffset
        tag, nextoffset, name = walker.next_tag(offset)
        if root_closed and tag != FDT_END:
            raise InputError("malformed FIT: content after the root node (two-root layout)")
        stop_at = nextoffset
        include_tok = False
        if tag == FDT_PROP:
            include_tok = want >= 2 and name not in exclude_props
            stop_at = offset
        elif tag == FDT_NOP:
            include_tok = want >= 2
            stop_at = offset
        elif tag == FDT_BEGIN_NODE:
            if len(stack) + 1 >= FDT_MAX_DEPTH:
                raise InputError(f"malformed FIT: nodes nested deeper than {FDT_MAX_DEPTH}")
            if not stack and name != "":
                raise InputError("malformed FIT: the root node has a name")
            path.append(name)
            full = "/" + "/".join(path[1:])
            stack.append(want)
            if want == 1:
                stop_at = offset
            if full in include:
                want = 2
            elif want:
                want -= 1
            else:
                stop_at = offset
            include_tok = bool(want)
        elif tag == FDT_END_NODE:
            if not stack:
                raise InputError("malformed FIT: unbalanced end of node")
            include_tok = bool(want)
            want = stack.pop()
            path.pop()
            root_closed = not stack
        elif tag == FDT_END:
            include_tok = True

        if include_tok and start == -1:
            if regions and offset == regions[-1][0] + regions[-1][1] - hdr.off_dt_struct:
                start = regions.pop()[0] - hdr.off_dt_struct  # merge with the previous region
            else:
                start = offset
        if not include_tok and start != -1:
            regions.append([hdr.off_dt_struct + start, stop_at - start])
            start = -1
        if tag == FDT_END:
            break
    if nextoffset != hdr.size_dt_struct:
        raise InputError("malformed FIT: FDT_END before the end of the struct block")
    last = [hdr.off_dt_struct + start, nextoffset - start]
    if add_string_tab:
        last[1] += hdr.size_dt_strings
    regions.append(last)
    return [(o, s) for o, s in regions]


def _printable(name: str, allowed_slash: bool = False) -> bool:
    return all(0x20 < ord(c) < 0x7F and (allowed_slash or c != "/") for c in name)


def check_structure(blob: bytes | bytearray) -> Header:
    """Walk the whole struct block as libfdt will: one root node, balanced nodes, properties only
    inside nodes, names of printable ASCII, FDT_END exactly at the end. libfdt's own checks are
    lighter, and its write functions trust the structure (a bad one corrupts memory)."""
    hdr = Header.parse(blob)
    walker = _Walker(blob, hdr)
    depth, offset, roots = 0, 0, 0
    while True:
        tag, nxt, name = walker.next_tag(offset)
        if tag == FDT_BEGIN_NODE:
            if depth == 0:
                roots += 1
                if roots > 1 or name != "":
                    raise InputError("malformed device tree: not exactly one root node")
            elif not name or not _printable(name):
                raise InputError(f"malformed device tree: node name {name!r} is empty or not printable ASCII")
            depth += 1
            if depth > FDT_MAX_DEPTH:
                raise InputError(f"malformed device tree: nodes nested deeper than {FDT_MAX_DEPTH}")
        elif tag == FDT_END_NODE:
            if depth == 0:
                raise InputError("malformed device tree: unbalanced end of node")
            depth -= 1
        elif tag == FDT_PROP:
            if depth == 0:
                raise InputError("malformed device tree: property outside any node")
            if not name or not _printable(name):
                raise InputError(f"malformed device tree: property name {name!r} is empty or not printable ASCII")
        elif tag == FDT_END:
            if depth or not roots:
                raise InputError("malformed device tree: FDT_END inside a node or before the root")
            if nxt != hdr.size_dt_struct:
                raise InputError("malformed device tree: FDT_END before the end of the struct block")
            return hdr
        offset = nxt


def _nodes_and_properties(blob: bytes | bytearray | memoryview) -> Iterator[tuple[str, str | None, int, int]]:
    """The struct block in order: (node path, None, 0, 0) for each node and (its node's path, name,
    absolute offset of the value, length) for each property. Nodes nest at most FDT_MAX_DEPTH deep
    and every end of node closes one."""
    hdr = Header.parse(blob)
    walker = _Walker(blob, hdr)
    path, offset = [], 0
    while True:
        tag, nxt, name = walker.next_tag(offset)
        if tag == FDT_BEGIN_NODE:
            path.append(name)
            if len(path) > FDT_MAX_DEPTH:
                raise InputError(f"malformed device tree: nodes nested deeper than {FDT_MAX_DEPTH}")
            yield "/" + "/".join(path[1:]), None, 0, 0
        elif tag == FDT_END_NODE:
            if not path:
                raise InputError("malformed device tree: unbalanced end of node")
            path.pop()
        elif tag == FDT_PROP:
            yield "/" + "/".join(path[1:]), name, hdr.off_dt_struct + offset + 12, walker.u32(offset + 4)
        elif tag == FDT_END:
            return
        offset = nxt


def node_names(blob: bytes | bytearray) -> list[str]:
    """Every node path, in struct order (for structural checks)."""
    return [path for path, prop, _, _ in _nodes_and_properties(blob) if prop is None]


def property_spans(blob: bytes | bytearray | memoryview, name: str) -> dict[str, tuple[int, int]]:
    """Absolute (offset, length) of every value of property ``name``, by node path, without copying."""
    return {path: (start, length) for path, start, length in value_spans(blob, name)}


def value_spans(blob: bytes | bytearray | memoryview, name: str) -> list[tuple[str, int, int]]:
    """(node path, absolute offset, length) of every value of property ``name``, in struct order."""
    return [(path, start, length) for path, prop, start, length in _nodes_and_properties(blob) if prop == name]


def without_values(blob: bytes | bytearray | memoryview, spans: list[tuple[int, int]]) -> bytes:
    """The tree (its first ``totalsize`` bytes) with the property values at ``spans`` (absolute
    offset, length, as value_spans gives them) cut out and their lengths set to 0.

    This is the tree libfdt's ``fdt_setprop(node, name, "", 0)`` leaves for each of them (the value
    and its padding spliced out of the struct block, every block after it moved down), made without
    copying the values: only the bytes around them are copied."""
    hdr = Header.parse(blob)
    struct_end = hdr.off_dt_struct + hdr.size_dt_struct
    view = memoryview(blob)
    parts: list = []
    pos = removed = 0
    for start, length in sorted(spans):
        if start < max(pos, hdr.off_dt_struct) + 12 or start + length > struct_end or start % 4:
            raise InputError(f"malformed device tree: property value at {start:#x} is not in the struct block")
        if struct.unpack_from(">I", blob, start - 8)[0] != length:
            raise InputError(f"malformed device tree: property value at {start:#x} has another length")
        parts += [view[pos:start - 8], b"\0\0\0\0", view[start - 4:start]]
        pos = start + _align4(length)
        removed += _align4(length)
    parts.append(view[pos:hdr.totalsize])
    out = bytearray().join(parts)

    def moved(off: int) -> int:
        return off - removed if off >= struct_end else off

    struct.pack_into(">10I", out, 0, hdr.magic, hdr.totalsize - removed, hdr.off_dt_struct,
                     moved(hdr.off_dt_strings), moved(hdr.off_mem_rsvmap), hdr.version, hdr.last_comp_version,
                     hdr.boot_cpuid_phys, hdr.size_dt_strings, hdr.size_dt_struct - removed)
    return bytes(out)


def with_values(tree: bytes | bytearray, values: list[tuple[int, object]]) -> list:
    """The inverse of without_values for a tree whose blocks are in libfdt's order (memory
    reservations, struct, strings, free space): each ``(offset, value)`` names an empty property
    value at ``offset`` that gets ``value`` and zero padding. Returns the new tree as a list of
    buffers, the values among them uncopied, byte for byte what ``fdt_setprop`` of each value (in
    any order) gives on a tree resized by exactly their padded sizes, provided the padding libfdt
    leaves is zeros: that holds when a value's length is a multiple of 4 or at least the size of the
    tree (libfdt's padding bytes are whatever lay beyond the value in the tree before it grew, and
    beyond the tree lies zeroed free space)."""
    hdr = Header.parse(tree)
    if not (hdr.off_mem_rsvmap <= hdr.off_dt_struct
            and hdr.off_dt_struct + hdr.size_dt_struct <= hdr.off_dt_strings
            and hdr.off_dt_strings + hdr.size_dt_strings <= hdr.totalsize == len(tree)):
        raise ValueError("the tree's blocks are not in libfdt's order")
    added = 0
    for offset, value in values:
        length = memoryview(value).nbytes
        if not (length % 4 == 0 or length >= len(tree)):
            raise ValueError("libfdt would not leave zero padding after this value")
        if struct.unpack_from(">I", tree, offset - 8)[0] != 0:
            raise ValueError(f"the property at {offset:#x} is not empty")
        added += _align4(length)
    head = bytearray(tree[:40])
    struct.pack_into(">I", head, 4, hdr.totalsize + added)
    struct.pack_into(">I", head, 12, hdr.off_dt_strings + added)
    struct.pack_into(">I", head, 36, hdr.size_dt_struct + added)
    view = memoryview(tree)
    parts: list = [bytes(head)]
    pos = 40
    for offset, value in sorted(values, key=lambda item: item[0]):
        length = memoryview(value).nbytes
        parts += [view[pos:offset - 8], length.to_bytes(4, "big"), view[offset - 4:offset], value,
                  b"\0" * (-length % 4)]
        pos = offset
    parts.append(view[pos:])
    return parts
