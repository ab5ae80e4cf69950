"""A flattened-device-tree walker of the test's own (the tool's parser is what is under test): where
the header fields, property headers and property values of a valid FIT or DTB lie."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tests.signing.fuzz.mutator import Field

BEGIN_NODE, END_NODE, PROP, NOP, END = 1, 2, 3, 4, 9
HEADER_FIELDS = ("magic", "totalsize", "off_dt_struct", "off_dt_strings", "off_mem_rsvmap", "version",
                 "last_comp_version", "boot_cpuid_phys", "size_dt_strings", "size_dt_struct")


@dataclass(frozen=True)
class Prop:
    node: str  # "/configurations/conf-1/signature-1"
    name: str
    offset: int  # of the FDT_PROP token
    value: int  # of the value
    size: int

    @property
    def end(self) -> int:
        return self.value + self.size


@dataclass(frozen=True)
class Tree:
    header: dict[str, int]
    props: list[Prop]
    nodes: list[tuple[str, int]]  # (path, offset of FDT_BEGIN_NODE)


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse(blob: bytes) -> Tree:
    header = dict(zip(HEADER_FIELDS, struct.unpack_from(">10I", blob, 0)))
    strings = header["off_dt_strings"]
    pos, end = header["off_dt_struct"], header["off_dt_struct"] + header["size_dt_struct"]
    path: list[str] = []
    props, nodes = [], []
    while pos < end:
        token = struct.unpack_from(">I", blob, pos)[0]
        if token == BEGIN_NODE:
            name_end = blob.index(b"\0", pos + 4)
            name = blob[pos + 4:name_end].decode()
            path.append(name)
            nodes.append(("/" + "/".join(p for p in path if p), pos))
            pos = _align(name_end + 1)
        elif token == END_NODE:
            path.pop()
            pos += 4
        elif token == PROP:
            size, nameoff = struct.unpack_from(">II", blob, pos + 4)
            name = blob[strings + nameoff:blob.index(b"\0", strings + nameoff)].decode()
            props.append(Prop("/" + "/".join(p for p in path if p), name, pos, pos + 12, size))
            pos = _align(pos + 12 + size)
        elif token == NOP:
            pos += 4
        elif token == END:
            break
        else:
            raise ValueError(f"bad FDT token {token} at {pos:#x}")
    return Tree(header, props, nodes)


def length_fields(blob: bytes) -> list[Field]:
    """The header's sizes and offsets, and every property's length and name offset."""
    tree = parse(blob)
    out = [Field(4 * i, 4, "big", name) for i, name in enumerate(HEADER_FIELDS) if name not in ("magic",)]
    for p in tree.props:
        out.append(Field(p.offset + 4, 4, "big", f"{p.node}:{p.name} len"))
        out.append(Field(p.offset + 8, 4, "big", f"{p.node}:{p.name} nameoff"))
    return out


def metadata(blob: bytes, big: int = 256) -> list[tuple[int, int]]:
    """Everything but large property values (payloads): header, structure tokens, small values,
    the strings block."""
    tree = parse(blob)
    h = tree.header
    out = [(0, h["off_dt_struct"])]
    pos = h["off_dt_struct"]
    for p in sorted(tree.props, key=lambda p: p.offset):
        if p.size > big:
            out.append((pos, p.value))
            pos = p.end
    out.append((pos, h["off_dt_struct"] + h["size_dt_struct"]))
    out.append((h["off_dt_strings"], h["off_dt_strings"] + h["size_dt_strings"]))
    return [(a, b) for a, b in out if b > a]
