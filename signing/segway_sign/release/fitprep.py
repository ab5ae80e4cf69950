"""Put the dm-verity env into an unsigned FIT before it is signed, so the FIT signature covers it.

Two places, chosen per plan step (``verity_env_in``):
- ``initramfs``: ``verity.env``, ``roothash`` and ``roothash.p7s`` are appended to the FIT's ramdisk
  under ``/usr/share/segway/verity/`` (where meta-segway's initramfs module reads them) as an extra
  newc archive (see :mod:`.initramfs`), and the ramdisk's hash nodes are recomputed;
- ``property``: every configuration gets ``segway,verity-env`` (the env text) and
  ``segway,verity-roothash``; a configuration signature covers its node's properties.
"""

from __future__ import annotations

import hashlib

import libfdt

from ..errors import InputError
from ..formats.fit import tree as fit_tree
from .initramfs import append_files

VERITY_DIR_IN_INITRAMFS = "usr/share/segway/verity"
ENV_PATH_IN_INITRAMFS = f"{VERITY_DIR_IN_INITRAMFS}/verity.env"


def _open(fit: bytes, headroom: int) -> libfdt.Fdt:
    try:
        fdt = fit_tree.open_fdt(fit)  # the whole structure checked first: libfdt trusts it
        if headroom:
            fdt.resize(fdt.totalsize() + headroom)
    except libfdt.FdtException as e:
        raise InputError(f"the FIT is not a valid device tree ({e})") from None
    return fdt


def _node(fdt: libfdt.Fdt, path: str) -> int:
    try:
        return fdt.path_offset(path)
    except libfdt.FdtException:
        raise InputError(f"the FIT has no {path} node") from None


def _subnodes(fdt: libfdt.Fdt, parent: int) -> list[int]:
    out = []
    try:
        off = fdt.first_subnode(parent)
    except libfdt.FdtException:
        return out
    while True:
        out.append(off)
        try:
            off = fdt.next_subnode(off)
        except libfdt.FdtException:
            return out


def _finish(fdt: libfdt.Fdt) -> bytes:
    fdt.pack()
    return bytes(fdt.as_bytearray())


def configurations(fit: bytes) -> list[str]:
    fdt = _open(fit, 0)
    return [fdt.get_name(o) for o in _subnodes(fdt, _node(fdt, "/configurations"))]


def add_env_property(fit: bytes, env_text: str, root_hash: str) -> bytes:
    fdt = _open(fit, len(env_text) * 2 + 4096)
    confs = _subnodes(fdt, _node(fdt, "/configurations"))
    if not confs:
        raise InputError("the FIT has no configuration to carry the verity env")
    for name in [fdt.get_name(o) for o in confs]:
        off = fdt.path_offset(f"/configurations/{name}")
        fdt.setprop_str(off, "segway,verity-env", env_text)
        off = fdt.path_offset(f"/configurations/{name}")
        fdt.setprop_str(off, "segway,verity-roothash", root_hash)
    return _finish(fdt)


def ramdisk_images(fdt: libfdt.Fdt) -> list[str]:
    names = []
    for off in _subnodes(fdt, _node(fdt, "/images")):
        try:
            kind = fdt.getprop(off, "type").as_str()
        except libfdt.FdtException:
            continue
        if kind == "ramdisk":
            names.append(fdt.get_name(off))
    return names


def add_env_to_initramfs(fit: bytes, env_text: str, extra: dict[str, bytes] | None = None) -> bytes:
    """Append the env (and ``extra`` files) to the FIT's one ramdisk; hash nodes follow the data."""
    fdt = _open(fit, 0)
    names = ramdisk_images(fdt)
    if len(names) != 1:
        raise InputError(f"the FIT has {len(names)} ramdisk images; verity_env_in: initramfs needs exactly one")
    path = f"/images/{names[0]}"
    off = _node(fdt, path)
    try:
        data = bytes(fdt.getprop(off, "data"))
    except libfdt.FdtException:
        raise InputError(f"{path} has no embedded data (external-data FITs are not supported)") from None
    try:
        compression = fdt.getprop(off, "compression").as_str()
    except libfdt.FdtException:
        compression = "none"
    if compression != "none":
        raise InputError(f"{path} is compressed by U-Boot ({compression}); the initramfs must be stored as is")
    files = {ENV_PATH_IN_INITRAMFS: env_text.encode()}
    files.update(extra or {})
    new = append_files(data, files)
    fdt = _open(fit, len(new) - len(data) + 4096)
    off = fdt.path_offset(path)
    fdt.setprop(off, "data", new)
    for h in _subnodes(fdt, fdt.path_offset(path)):
        name = fdt.get_name(h)
        if not name.startswith("hash"):
            continue
        hpath = f"{path}/{name}"
        algo = fdt.getprop(fdt.path_offset(hpath), "algo").as_str()
        if algo not in ("sha1", "sha256", "sha384", "sha512", "crc32"):
            raise InputError(f"{hpath}: unsupported hash algo {algo}")
        if algo == "crc32":
            import zlib
            value = zlib.crc32(new).to_bytes(4, "big")
        else:
            value = hashlib.new(algo, new).digest()
        fdt.setprop(fdt.path_offset(hpath), "value", value)
    return _finish(fdt)


def read_initramfs_env(fit: bytes) -> str | None:
    """The verity env appended to the FIT's ramdisk, if any (for release verification)."""
    fdt = _open(fit, 0)
    names = ramdisk_images(fdt)
    if len(names) != 1:
        return None
    data = bytes(fdt.getprop(fdt.path_offset(f"/images/{names[0]}"), "data"))
    marker = b"070701"
    name = ENV_PATH_IN_INITRAMFS.encode() + b"\0"
    idx = data.rfind(name)
    if idx < 110:
        return None
    header = data[idx - 110: idx]
    if not header.startswith(marker):
        return None
    size = int(header[54:62], 16)
    # Entry data begins at the next 4-byte boundary after header + name.
    entry_start = idx - 110
    data_off = entry_start + ((110 + len(name) + 3) & ~3)
    return data[data_off: data_off + size].decode()


def read_property_env(fit: bytes) -> dict[str, str]:
    fdt = _open(fit, 0)
    out = {}
    for off in _subnodes(fdt, _node(fdt, "/configurations")):
        try:
            out[fdt.get_name(off)] = fdt.getprop(off, "segway,verity-env").as_str()
        except libfdt.FdtException:
            pass
    return out
