"""Tampered variants of a signed FIT, after the attack list of U-Boot's ``test/py/tests/test_vboot.py``.

Every attack is a pure function ``bytes -> bytes`` on a signed FIT (embedded data, as mkimage or
segway-sign writes it). :data:`ATTACKS` records, for each, the configuration ``bootm`` must be
pointed at to exercise it. A verifier that accepts any of the outputs is broken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Callable

import libfdt

# U-Boot's FIT_SIGNATURE_MAX_SIZE (include/image.h) is 0x10000000.
OVERSIZED_TOTALSIZE = 0x10000001
EVIL_PAYLOAD = b"segway: this payload is not the signed kernel\n" * 8
_HEADER = struct.Struct(">10I")
FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9


class FitAttackError(ValueError):
    """The input is not a signed FIT of the expected shape."""


# --------------------------------------------------------------------------------------------
# libfdt helpers


def _open(fit: bytes, headroom: int = 0) -> libfdt.Fdt:
    try:
        fdt = libfdt.Fdt(bytearray(fit))
    except libfdt.FdtException as exc:
        raise FitAttackError(f"not a flattened device tree: {exc}") from exc
    # libfdt edits in place; give it room for added nodes, properties and strings.
    fdt.resize(fdt.totalsize() + headroom + 4096)
    return fdt


def _close(fdt: libfdt.Fdt) -> bytes:
    fdt.pack()
    return bytes(fdt.as_bytearray())


def _offset(fdt: libfdt.Fdt, path: str) -> int:
    off = fdt.path_offset(path, [libfdt.NOTFOUND])
    if off < 0:
        raise FitAttackError(f"FIT has no node {path}")
    return off


def _getprop(fdt: libfdt.Fdt, path: str, name: str) -> bytes:
    prop = fdt.getprop(_offset(fdt, path), name, [libfdt.NOTFOUND])
    if prop == -libfdt.NOTFOUND:
        raise FitAttackError(f"FIT node {path} has no property {name}")
    return bytes(prop)


def _getstr(fdt: libfdt.Fdt, path: str, name: str) -> str:
    return _getprop(fdt, path, name).split(b"\0", 1)[0].decode()


def _subnodes(fdt: libfdt.Fdt, offset: int) -> list[int]:
    found = []
    sub = fdt.first_subnode(offset, [libfdt.NOTFOUND])
    while sub >= 0:
        found.append(sub)
        sub = fdt.next_subnode(sub, [libfdt.NOTFOUND])
    return found


def _properties(fdt: libfdt.Fdt, offset: int) -> list[tuple[str, bytes]]:
    props = []
    poff = fdt.first_property_offset(offset, [libfdt.NOTFOUND])
    while poff >= 0:
        prop = fdt.get_property_by_offset(poff)
        props.append((prop.name, bytes(prop)))
        poff = fdt.next_property_offset(poff, [libfdt.NOTFOUND])
    return props


def default_config(fit: bytes) -> str:
    """Name of the FIT's default configuration."""
    return _getstr(_open(fit), "/configurations", "default")


def _image_of(fdt: libfdt.Fdt, conf: str, kind: str = "kernel") -> str:
    return _getstr(fdt, f"/configurations/{conf}", kind)


def _signature_path(fdt: libfdt.Fdt, conf: str) -> str:
    for sub in _subnodes(fdt, _offset(fdt, f"/configurations/{conf}")):
        if fdt.get_name(sub).startswith("signature"):
            return fdt.get_path(sub)
    raise FitAttackError(f"configuration {conf} has no signature node")


def _read_subtree(fdt: libfdt.Fdt, path: str, with_children: bool = True) -> tuple:
    off = _offset(fdt, path)
    children = []
    if with_children:
        names = [fdt.get_name(c) for c in _subnodes(fdt, off)]
        children = [(n, _read_subtree(fdt, f"{path}/{n}")) for n in names]
    return _properties(fdt, off), children


def _write_subtree(fdt: libfdt.Fdt, parent_path: str, name: str, tree: tuple) -> str:
    props, children = tree
    fdt.add_subnode(_offset(fdt, parent_path), name)
    path = f"{parent_path.rstrip('/')}/{name}"
    # libfdt inserts a new property / subnode as the first one: add in reverse to keep order.
    for prop_name, value in reversed(props):
        fdt.setprop(_offset(fdt, path), prop_name, value)
    for child_name, child in reversed(children):
        _write_subtree(fdt, path, child_name, child)
    return path


def _copy_node(fdt: libfdt.Fdt, src_path: str, dst_parent_path: str, name: str,
               with_children: bool = True) -> str:
    """Copy a node (properties in order, optionally its subtree) to ``dst_parent/name``."""
    # Read everything first: once "kernel-1@evil" exists, "/images/kernel-1" may resolve to it.
    return _write_subtree(fdt, dst_parent_path, name, _read_subtree(fdt, src_path, with_children))


def _hash_nodes(fdt: libfdt.Fdt, image_path: str) -> list[str]:
    return [fdt.get_path(s) for s in _subnodes(fdt, _offset(fdt, image_path))
            if fdt.get_name(s).startswith("hash")]


def _digest(algo: str, data: bytes) -> bytes:
    try:
        return hashlib.new(algo, data).digest()
    except ValueError as exc:
        raise FitAttackError(f"unsupported hash algo {algo!r}") from exc


def _set_image_data(fdt: libfdt.Fdt, image_path: str, data: bytes) -> None:
    """Replace an image's data and make its hash nodes match, as an attacker would."""
    fdt.setprop(_offset(fdt, image_path), "data", data)
    for hash_path in _hash_nodes(fdt, image_path):
        algo = _getstr(fdt, hash_path, "algo")
        fdt.setprop(_offset(fdt, hash_path), "value", _digest(algo, data))


def _with_data(tree: tuple, data: bytes) -> tuple:
    """A copy of an image subtree with other data and hash values that match it."""
    props, children = tree
    props = [(n, data if n == "data" else v) for n, v in props]
    new_children = []
    for name, (cprops, grandchildren) in children:
        if name.startswith("hash"):
            algo = dict(cprops)["algo"].split(b"\0")[0].decode()
            cprops = [(n, _digest(algo, data) if n == "value" else v) for n, v in cprops]
        new_children.append((name, (cprops, grandchildren)))
    return props, new_children


def _flip_middle(data: bytes) -> bytes:
    if not data:
        raise FitAttackError("empty image data")
    buf = bytearray(data)
    buf[len(buf) // 2] ^= 0x01
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# Attacks (all return a new blob; the input is never modified)


def flip_kernel_data(fit: bytes, conf: str | None = None) -> bytes:
    """Flip one bit in the middle of the kernel's data; hashes untouched. Target: ``conf``."""
    fdt = _open(fit)
    conf = conf or _getstr(fdt, "/configurations", "default")
    path = f"/images/{_image_of(fdt, conf)}"
    fdt.setprop(_offset(fdt, path), "data", _flip_middle(_getprop(fdt, path, "data")))
    return _close(fdt)


def add_config_property(fit: bytes, conf: str | None = None) -> bytes:
    """Add a new (covered) property to the signed configuration. Target: ``conf``."""
    fdt = _open(fit, 64)
    conf = conf or _getstr(fdt, "/configurations", "default")
    fdt.setprop_str(_offset(fdt, f"/configurations/{conf}"), "segway-injected", "evil")
    return _close(fdt)


def modify_config_property(fit: bytes, conf: str | None = None) -> bytes:
    """Change one character of the configuration's description (same length). Target: ``conf``."""
    fdt = _open(fit)
    conf = conf or _getstr(fdt, "/configurations", "default")
    path = f"/configurations/{conf}"
    value = bytearray(_getprop(fdt, path, "description"))
    if len(value) < 2:
        raise FitAttackError(f"{path} description is empty")
    value[0] = ord("X") if value[0] != ord("X") else ord("Y")
    fdt.setprop(_offset(fdt, path), "description", bytes(value))
    return _close(fdt)


def flip_signature_value(fit: bytes, conf: str | None = None) -> bytes:
    """Increment the first byte of the configuration signature ``value``. Target: ``conf``."""
    fdt = _open(fit)
    conf = conf or _getstr(fdt, "/configurations", "default")
    sig = _signature_path(fdt, conf)
    value = bytearray(_getprop(fdt, sig, "value"))
    value[0] = (value[0] + 1) & 0xFF
    fdt.setprop(_offset(fdt, sig), "value", bytes(value))
    return _close(fdt)


def clone_images(fit: bytes, conf: str | None = None) -> bytes:
    """Copy ``/images`` to ``/images/images``, point ``hashed-nodes`` at the copies, then change
    the real kernel and its hash. Verifiers that trust the unsigned ``hashed-nodes`` check the
    untouched copies and boot the changed kernel. Target: ``conf``."""
    fdt = _open(fit, len(fit) + 4096)
    conf = conf or _getstr(fdt, "/configurations", "default")
    images = [fdt.get_name(s) for s in _subnodes(fdt, _offset(fdt, "/images"))]
    fdt.add_subnode(_offset(fdt, "/images"), "images")
    for name in reversed(images):
        _copy_node(fdt, f"/images/{name}", "/images/images", name)
    sig = _signature_path(fdt, conf)
    nodes = _getprop(fdt, sig, "hashed-nodes").rstrip(b"\0").split(b"\0")
    rewritten = [n.replace(b"/images/", b"/images/images/", 1) for n in nodes]
    fdt.setprop(_offset(fdt, sig), "hashed-nodes", b"\0".join(rewritten) + b"\0")
    kernel = f"/images/{_image_of(fdt, conf)}"
    _set_image_data(fdt, kernel, _flip_middle(_getprop(fdt, kernel, "data")))
    return _close(fdt)


def kernel_unit_address(fit: bytes, conf: str | None = None) -> bytes:
    """Insert ``<kernel>@evil`` with other data and a matching hash before the real kernel node;
    libfdt's name lookup (unit address ignored) finds it first. Target: ``conf``."""
    fdt = _open(fit, len(EVIL_PAYLOAD) + 4096)
    conf = conf or _getstr(fdt, "/configurations", "default")
    kernel = _image_of(fdt, conf)
    if "@" in kernel:
        raise FitAttackError(f"kernel node {kernel} already has a unit address")
    # add_subnode inserts as the first child of /images, i.e. before the real kernel.
    tree = _with_data(_read_subtree(fdt, f"/images/{kernel}"), EVIL_PAYLOAD)
    _write_subtree(fdt, "/images", f"{kernel}@evil", tree)
    return _close(fdt)


def forge_second_config(fit: bytes, conf: str | None = None) -> bytes:
    """Add an unhashed ``kernel-2`` and a ``conf-2`` (copy of ``conf`` incl. its signature) that
    selects it, and make ``conf-2`` the default. Target: ``conf-2``."""
    fdt = _open(fit, len(EVIL_PAYLOAD) + 4096)
    conf = conf or _getstr(fdt, "/configurations", "default")
    kernel = _image_of(fdt, conf)
    props, _ = _with_data(_read_subtree(fdt, f"/images/{kernel}", with_children=False), EVIL_PAYLOAD)
    _write_subtree(fdt, "/images", "kernel-2", (props, []))
    conf2 = _copy_node(fdt, f"/configurations/{conf}", "/configurations", "conf-2")
    fdt.setprop_str(_offset(fdt, conf2), "kernel", "kernel-2")
    fdt.setprop_str(_offset(fdt, "/configurations"), "default", "conf-2")
    return _close(fdt)


def hashed_strings_zero(fit: bytes, conf: str | None = None) -> bytes:
    """Set the signature's ``hashed-strings`` to ``<0>`` (one cell). Target: ``conf``."""
    return _set_hashed_strings(fit, conf, struct.pack(">I", 0))


def hashed_strings_oversize(fit: bytes, conf: str | None = None) -> bytes:
    """Set ``hashed-strings`` to ``<0 size_dt_strings+1>`` (past the strings block). Target: ``conf``."""
    size = _open(fit).size_dt_strings()
    return _set_hashed_strings(fit, conf, struct.pack(">II", 0, size + 1))


def hashed_strings_whole_table(fit: bytes, conf: str | None = None) -> bytes:
    """Set ``hashed-strings`` to ``<0 size_dt_strings>`` (also covering the strings added by
    signing, which the signer did not hash). Target: ``conf``."""
    size = _open(fit).size_dt_strings()
    return _set_hashed_strings(fit, conf, struct.pack(">II", 0, size))


def _set_hashed_strings(fit: bytes, conf: str | None, value: bytes) -> bytes:
    fdt = _open(fit)
    conf = conf or _getstr(fdt, "/configurations", "default")
    sig = _signature_path(fdt, conf)
    _getprop(fdt, sig, "hashed-strings")
    fdt.setprop(_offset(fdt, sig), "hashed-strings", value)
    return _close(fdt)


def oversized_totalsize(fit: bytes) -> bytes:
    """Set the header ``totalsize`` to FIT_SIGNATURE_MAX_SIZE + 1. Target: the default config."""
    _open(fit)  # validate
    blob = bytearray(fit)
    struct.pack_into(">I", blob, 4, OVERSIZED_TOTALSIZE)
    return bytes(blob)


# --------------------------------------------------------------------------------------------
# Fake root: needs a second top-level node, which libfdt cannot create, so work on the raw
# struct block.


@dataclasses.dataclass
class _RawNode:
    name: bytes
    props: list[list]  # [nameoff, value]
    children: list["_RawNode"]

    def clone(self) -> "_RawNode":
        return _RawNode(self.name, [list(p) for p in self.props], [c.clone() for c in self.children])

    def child(self, name: bytes) -> "_RawNode":
        for c in self.children:
            if c.name == name:
                return c
        raise FitAttackError(f"FIT has no node {name.decode()}")


def _raw_parse(blob: bytes) -> tuple[bytes, list[_RawNode], bytes, tuple]:
    hdr = _HEADER.unpack_from(blob, 0)
    magic, _total, off_struct, off_strings, off_rsv, version, last_comp, cpuid, size_strings, size_struct = hdr
    if magic != FDT_MAGIC:
        raise FitAttackError("not a flattened device tree")
    struct_block = blob[off_struct:off_struct + size_struct]
    strings = blob[off_strings:off_strings + size_strings]
    rsv = blob[off_rsv:off_struct]
    pos = 0

    def u32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from(">I", struct_block, pos)
        pos += 4
        return v

    def node() -> _RawNode:
        nonlocal pos
        end = struct_block.index(b"\0", pos)
        n = _RawNode(struct_block[pos:end], [], [])
        pos = (end + 4) & ~3
        while True:
            tag = u32()
            if tag == FDT_PROP:
                length, nameoff = u32(), u32()
                n.props.append([nameoff, struct_block[pos:pos + length]])
                pos = (pos + length + 3) & ~3
            elif tag == FDT_BEGIN_NODE:
                n.children.append(node())
            elif tag == FDT_END_NODE:
                return n
            elif tag != FDT_NOP:
                raise FitAttackError(f"unexpected FDT tag {tag}")

    tops = []
    while True:
        tag = u32()
        if tag == FDT_BEGIN_NODE:
            tops.append(node())
        elif tag == FDT_END:
            break
        elif tag != FDT_NOP:
            raise FitAttackError(f"unexpected FDT tag {tag}")
    return rsv, tops, strings, (version, last_comp, cpuid)


def _raw_compose(rsv: bytes, tops: list[_RawNode], strings: bytes, meta: tuple) -> bytes:
    out = bytearray()

    def emit(n: _RawNode) -> None:
        name = n.name + b"\0"
        out.extend(struct.pack(">I", FDT_BEGIN_NODE) + name + b"\0" * (-len(name) % 4))
        for nameoff, value in n.props:
            out.extend(struct.pack(">III", FDT_PROP, len(value), nameoff) + value)
            out.extend(b"\0" * (-len(value) % 4))
        for c in n.children:
            emit(c)
        out.extend(struct.pack(">I", FDT_END_NODE))

    for top in tops:
        emit(top)
    out.extend(struct.pack(">I", FDT_END))
    off_rsv = _HEADER.size
    off_struct = off_rsv + len(rsv)
    off_strings = off_struct + len(out)
    total = off_strings + len(strings)
    version, last_comp, cpuid = meta
    header = _HEADER.pack(FDT_MAGIC, total, off_struct, off_strings, off_rsv, version, last_comp,
                          cpuid, len(strings), len(out))
    return header + rsv + bytes(out) + strings


def fake_root(fit: bytes, conf: str | None = None) -> bytes:
    """Prepend a copy of the whole tree as a second top-level node ``f@keroot`` whose config
    selects an ``evil_kernel`` (other data, matching hash). Target: ``conf`` (the default)."""
    fdt = _open(fit)
    conf = conf or _getstr(fdt, "/configurations", "default")
    kernel = _image_of(fdt, conf).encode()
    rsv, tops, strings, meta = _raw_parse(fit)
    if len(tops) != 1:
        raise FitAttackError("FIT already has more than one top-level node")

    def props_named(node: _RawNode, name: bytes) -> list[list]:
        return [p for p in node.props if strings[p[0]:strings.index(b"\0", p[0])] == name]

    fake = tops[0].clone()
    fake.name = b"f@keroot"
    for prop in props_named(fake.child(b"configurations").child(conf.encode()), b"kernel"):
        prop[1] = b"evil_kernel\0"
    image = fake.child(b"images").child(kernel)
    image.name = b"evil_kernel"
    for prop in props_named(image, b"data"):
        prop[1] = EVIL_PAYLOAD
    for child in image.children:
        if child.name.startswith(b"hash"):
            algo = props_named(child, b"algo")[0][1].split(b"\0")[0].decode()
            for prop in props_named(child, b"value"):
                prop[1] = _digest(algo, EVIL_PAYLOAD)
    return _raw_compose(rsv, [fake] + tops, strings, meta)


# --------------------------------------------------------------------------------------------
# Unsigned copy


def unsigned_copy(fit: bytes) -> bytes:
    """Remove ``value`` from every signature node (configurations and images)."""
    fdt = _open(fit)
    removed = 0
    for top in ("/configurations", "/images"):
        for node in _subnodes(fdt, _offset(fdt, top)):
            for sub in [fdt.get_path(s) for s in _subnodes(fdt, node)]:
                if sub.rsplit("/", 1)[1].startswith("signature"):
                    off = _offset(fdt, sub)
                    if fdt.getprop(off, "value", [libfdt.NOTFOUND]) != -libfdt.NOTFOUND:
                        fdt.delprop(off, "value")
                        removed += 1
    if not removed:
        raise FitAttackError("FIT carries no signature value")
    return _close(fdt)


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    apply: Callable[[bytes], bytes]
    conf: str  # the configuration ``bootm <addr>#<conf>`` must select to exercise it
    description: str


ATTACKS: tuple[Attack, ...] = (
    Attack("flip-kernel-data", flip_kernel_data, "conf-1", "one bit of the kernel data flipped"),
    Attack("add-config-property", add_config_property, "conf-1", "new property in the signed config"),
    Attack("modify-config-property", modify_config_property, "conf-1", "config description changed"),
    Attack("flip-signature-value", flip_signature_value, "conf-1", "first signature byte incremented"),
    Attack("clone-images", clone_images, "conf-1", "/images cloned, hashed-nodes redirected, kernel changed"),
    Attack("kernel-unit-address", kernel_unit_address, "conf-1", "kernel-1@evil shadows kernel-1"),
    Attack("forge-second-config", forge_second_config, "conf-2", "unhashed kernel-2 selected by a copied conf-2"),
    Attack("fake-root", fake_root, "conf-1", "second top-level node f@keroot with an evil kernel"),
    Attack("hashed-strings-zero", hashed_strings_zero, "conf-1", "hashed-strings = <0>"),
    Attack("hashed-strings-oversize", hashed_strings_oversize, "conf-1", "hashed-strings = <0 size+1>"),
    Attack("hashed-strings-whole-table", hashed_strings_whole_table, "conf-1", "hashed-strings = <0 size>"),
    Attack("oversized-totalsize", oversized_totalsize, "conf-1", "header totalsize = 0x10000001"),
)
