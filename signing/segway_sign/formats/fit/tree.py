"""Reading a FIT with pylibfdt: nodes, properties, image data, configuration references."""

from __future__ import annotations

import functools
import hashlib
import zlib
from typing import Callable, Iterator, TypeVar

import libfdt

from ...errors import InputError
from .regions import check_structure, node_names

IMAGES = "/images"
CONFIGS = "/configurations"
# Configuration properties that never name images (U-Boot's fit_config_get_signed_nodes skips them).
NON_IMAGE_CONF_PROPS = frozenset({"description", "compatible", "default"})
# What mkimage signs when a signature node has no sign-images (image-host.c default_list).
DEFAULT_SIGN_IMAGES = ("kernel", "fdt", "script")

Progress = Callable[[int], None]


F = TypeVar("F", bound=Callable)


def fdt_errors(what: str) -> Callable[[F], F]:
    """Report a libfdt error escaping ``func`` as one line (InputError) naming ``what`` failed."""
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except libfdt.FdtException as err:
                raise InputError(f"{what}: {err}") from None
        return wrapper  # type: ignore[return-value]
    return decorate


def open_fdt(blob: bytes | bytearray) -> libfdt.Fdt:
    """A pylibfdt tree of ``blob`` once its whole structure is checked (libfdt trusts it)."""
    check_structure(blob)
    try:
        return libfdt.Fdt(bytearray(blob))
    except libfdt.FdtException as err:
        raise InputError(f"malformed device tree: {err}") from None


def edit_tree(blob: bytes | bytearray, room: int, edit: Callable[[libfdt.Fdt], None],
              what: str = "cannot edit the device tree") -> bytes:
    """``blob`` after ``edit(fdt)`` on a copy with ``room`` bytes to grow into, packed.

    When libfdt runs out of space the edit is redone on a fresh copy with twice the room, so a
    tree without slack (or an edit larger than guessed) still fits; other libfdt errors and a tree
    that would grow beyond 64 MiB are one-line errors."""
    room = max(room, 256)
    while True:
        fdt = open_fdt(blob)
        try:
            fdt.resize(fdt.totalsize() + room)
            edit(fdt)
            fdt.pack()
            return bytes(fdt.as_bytearray())
        except libfdt.FdtException as err:
            if err.err != -libfdt.NOSPACE:
                raise InputError(f"{what}: {err}") from None
        if room >= 64 << 20:
            raise InputError(f"{what}: the tree would grow by more than 64 MiB")
        room *= 2


def check_fit_structure(blob: bytes | bytearray) -> list[str]:
    """Structural checks U-Boot applies with FIT signatures enabled; return all node paths."""
    paths = node_names(blob)
    for path in paths:
        if "@" in path.rsplit("/", 1)[-1]:
            raise InputError(f"FIT node {path} has a unit address ('@'), which signature checking forbids")
    if IMAGES not in paths:
        raise InputError("not a FIT: no /images node")
    return paths


def offset(fdt: libfdt.Fdt, path: str) -> int:
    try:
        return fdt.path_offset(path)
    except libfdt.FdtException:
        raise InputError(f"FIT has no node {path}") from None


def subnodes(fdt: libfdt.Fdt, path: str) -> list[str]:
    """Names of the children of ``path``, in tree order."""
    names = []
    node = fdt.first_subnode(offset(fdt, path), [libfdt.NOTFOUND])
    while node >= 0:
        names.append(fdt.get_name(node))
        node = fdt.next_subnode(node, [libfdt.NOTFOUND])
    return names


def properties(fdt: libfdt.Fdt, path: str) -> list[tuple[str, bytes]]:
    out = []
    prop = fdt.first_property_offset(offset(fdt, path), [libfdt.NOTFOUND])
    while prop >= 0:
        p = fdt.get_property_by_offset(prop)
        out.append((p.name, bytes(p)))
        prop = fdt.next_property_offset(prop, [libfdt.NOTFOUND])
    return out


def getprop(fdt: libfdt.Fdt, path: str, name: str) -> bytes | None:
    value = fdt.getprop(offset(fdt, path), name, [libfdt.NOTFOUND])
    return None if isinstance(value, int) else bytes(value)


def getstr(fdt: libfdt.Fdt, path: str, name: str) -> str | None:
    value = getprop(fdt, path, name)
    if value is None:
        return None
    return value.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def stringlist(value: bytes | None) -> list[str]:
    if not value:
        return []
    return [s.decode("utf-8", errors="replace") for s in value.rstrip(b"\0").split(b"\0")]


def external_span(fdt: libfdt.Fdt, blob_len: int, name: str,
                  totalsize: int | None = None) -> tuple[int, int, str] | None:
    """Where an image's external data lies (mkimage -E: ``data-offset`` after the 4-byte aligned
    tree; -p: absolute ``data-position``): (start, size, "offset"|"position"), or None.
    ``totalsize``: the FIT's tree size when ``fdt`` is a copy of it with values taken out."""
    path = f"{IMAGES}/{name}"
    size = getprop(fdt, path, "data-size")
    if size is None:
        return None
    pos, off = getprop(fdt, path, "data-position"), getprop(fdt, path, "data-offset")
    if pos is not None:
        start, mode = int.from_bytes(pos, "big"), "position"
    elif off is not None:
        tree_size = fdt.totalsize() if totalsize is None else totalsize
        start, mode = ((tree_size + 3) & ~3) + int.from_bytes(off, "big"), "offset"
    else:
        raise InputError(f"image {name} has data-size but no data-offset or data-position")
    length = int.from_bytes(size, "big")
    if start + length > blob_len:
        raise InputError(f"image {name}: external data [{start:#x}, +{length:#x}) lies beyond the end of the file")
    return start, length, mode


def image_data(fdt: libfdt.Fdt, blob: bytes | bytearray, name: str) -> bytes:
    """An image's payload: the ``data`` property, or external data (mkimage -E / -p)."""
    data = getprop(fdt, f"{IMAGES}/{name}", "data")
    if data is not None:
        return data
    span = external_span(fdt, len(blob), name)
    if span is None:
        raise InputError(f"image {name} has no data")
    start, length, _ = span
    return bytes(blob[start:start + length])


def digest(algo: str, data: bytes, progress: Progress | None = None) -> bytes:
    """A FIT hash-node value (U-Boot's calculate_hash)."""
    view = memoryview(data)
    step = 8 << 20
    return digests([algo], (view[s:s + step] for s in range(0, len(view), step)), progress)[algo]


def digests(algos: list[str], pieces, progress: Progress | None = None) -> dict[str, bytes]:
    """FIT hash-node values of the data given as consecutive ``pieces``, every algorithm in one pass."""
    for algo in algos:
        if algo != "crc32" and algo not in ("md5", "sha1", "sha256", "sha384", "sha512"):
            raise InputError(f"unsupported FIT hash algorithm {algo!r}")
    hashers = {a: hashlib.new(a) for a in algos if a != "crc32"}
    crc = 0 if "crc32" in algos else None
    for piece in pieces:
        for h in hashers.values():
            h.update(piece)
        if crc is not None:
            crc = zlib.crc32(piece, crc)
        if progress:
            progress(memoryview(piece).nbytes)
    out = {a: h.digest() for a, h in hashers.items()}
    if crc is not None:
        out["crc32"] = crc.to_bytes(4, "big")
    return out


def conf_image_refs(fdt: libfdt.Fdt, conf: str, prop_names: Iterator[str] | None = None) -> list[tuple[str, str]]:
    """(property, image name) pairs of a configuration, in property then list order.

    With ``prop_names`` only those properties are followed (mkimage's sign-images); otherwise every
    property except description/compatible/default whose entries name an image (U-Boot's verifier).
    """
    path = f"{CONFIGS}/{conf}"
    images = set(subnodes(fdt, IMAGES))
    out = []
    if prop_names is None:
        for name, value in properties(fdt, path):
            if name in NON_IMAGE_CONF_PROPS:
                continue
            out.extend((name, entry) for entry in stringlist(value) if entry in images)
    else:
        for name in prop_names:
            out.extend((name, entry) for entry in stringlist(getprop(fdt, path, name)))
    return out


def hash_children(fdt: libfdt.Fdt, image: str) -> list[str]:
    return [n for n in subnodes(fdt, f"{IMAGES}/{image}") if n.startswith("hash")]
