"""HABv4 image signing for i.MX 6/7 (``u-boot.imx``) and i.MX 8M (``flash.bin``: SPL part and FIT part).

Each part starts at an IVT; HAB authenticates the blocks of that part with the CSF the IVT's ``csf``
pointer designates. Blocks are derived from the IVTs (and the FIT's external-data layout) the way
imx-mkimage prints them (``spl hab block`` / ``sld hab block`` + ``print_fit_hab``), or given
explicitly. Keys: SRK table (file), CSF and IMG keys with their certificates under the chosen SRK.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass, field
from typing import Sequence

from cryptography import x509

from ..errors import InputError, UsageError
from . import hab_csf, hab_srk
from .hab_csf import Block
# Re-exported: the key ceremony (pki init) takes the SRK fuse values from here.
from .hab_srk import fuse_prog_lines, hash_fuse_words, srk_fuse_words, srk_hash, srk_table  # noqa: F401
from .ivt import IVT_SIZE, Ivt, boot_data, find_ivts

FDT_MAGIC = b"\xd0\x0d\xfe\xed"
SOCS = ("imx6", "imx7", "imx8m")


@dataclass
class HabKeys:
    """Signing material. Fast authentication (``nocak``): ``csf_key``/``csf_cert`` are the SRK's own
    key and certificate, and no IMG key is used."""

    srk_table: bytes
    srk_index: int  # 0-based
    csf_key: object
    csf_cert: x509.Certificate
    img_key: object = None
    img_cert: x509.Certificate | None = None
    nocak: bool = False


@dataclass
class SignedPart:
    name: str  # "imx", "spl" or "fit"
    ivt_offset: int
    csf_offset: int
    csf: bytes
    blocks: list[Block] = field(default_factory=list)


@dataclass
class SignedImage:
    image: bytes
    parts: list[SignedPart]


def parse_blocks(text: str) -> list[Block]:
    """Blocks as imx-mkimage/CST write them: ``addr offset length`` triples, optional ``"file"`` names,
    separated by commas or newlines (e.g. ``0x7e0fc0 0x0 0x2d600``)."""
    blocks = []
    for chunk in text.replace("\n", ",").split(","):
        words = [w for w in chunk.split() if not w.startswith('"')]
        if not words:
            continue
        if len(words) != 3:
            raise UsageError(f"block {chunk.strip()!r} is not 'address offset length'")
        try:
            values = [int(w, 0) for w in words]
        except ValueError:
            raise UsageError(f"block {chunk.strip()!r} has a non-numeric field") from None
        if not all(0 <= v <= 0xFFFFFFFF for v in values):
            raise UsageError(f"block {chunk.strip()!r}: HAB addresses and sizes are 32-bit")
        blocks.append(Block(*values))
    if not blocks:
        raise UsageError("empty block list")
    return blocks


def loader_blocks(ivt: Ivt) -> list[Block]:
    """i.MX6/7 ``u-boot.imx`` and the i.MX8M SPL part: one block from the IVT to the CSF."""
    if ivt.csf <= ivt.self_addr:
        raise InputError(f"IVT at 0x{ivt.offset:x} has no CSF pointer (build U-Boot with CONFIG_IMX_HAB / "
                         "a CSF size in the imximage config)")
    return [Block(ivt.self_addr, ivt.offset, ivt.csf - ivt.self_addr)]


def _fit_start(image: bytes, ivt: Ivt) -> tuple[int, int]:
    """(file offset, padded header size) of the FIT whose tree the IVT follows (tree padded to 4 KiB)."""
    for pad in range(0x1000, 0x20001, 0x1000):
        off = ivt.offset - pad
        if off < 0:
            break
        if image[off : off + 4] == FDT_MAGIC:
            (total,) = struct.unpack_from(">I", image, off + 4)
            if (total + 0xFFF) & ~0xFFF == pad:
                return off, pad
    raise InputError(f"IVT at 0x{ivt.offset:x} does not follow a FIT tree padded to 4 KiB")


def fit_blocks(image: bytes, ivt: Ivt) -> list[Block]:
    """i.MX8M FIT part: the FIT tree + its IVT, then each image's external data at its load address.

    An image without ``load`` (the U-Boot device tree) is placed right after the default
    configuration's firmware image, where SPL copies it; U-Boot releases that 8-byte-align that address
    need ``--fit-blocks`` (as imx-mkimage's ``print_fit_hab`` prints them) when U-Boot's size is not a
    multiple of 8.
    """
    import libfdt

    fit_off, pad = _fit_start(image, ivt)
    blocks = [Block(ivt.self_addr - pad, fit_off, pad + IVT_SIZE)]
    try:
        fdt = libfdt.Fdt(bytes(image[fit_off : fit_off + pad]))
        images = fdt.path_offset("/images")
    except libfdt.FdtException as err:
        raise InputError(f"FIT at 0x{fit_off:x}: {err}") from None
    try:
        return blocks + _fit_image_blocks(fdt, images, image, fit_off)
    except (libfdt.FdtException, struct.error, ValueError) as err:
        raise InputError(f"FIT at 0x{fit_off:x} is malformed: {err}") from None


def _fit_image_blocks(fdt, images: int, image: bytes, fit_off: int) -> list[Block]:
    import libfdt

    def prop(node, name):
        value = fdt.getprop(node, name, quiet=[libfdt.NOTFOUND])
        return None if isinstance(value, int) else value

    def u32(node, name):
        value = prop(node, name)
        return None if value is None else value.as_uint32()

    (total,) = struct.unpack_from(">I", image, fit_off + 4)
    entries = []  # (name, load or None, file offset, size)
    node = fdt.first_subnode(images, quiet=[libfdt.NOTFOUND])
    while node >= 0:
        name = fdt.get_name(node)
        size, position, offset = u32(node, "data-size"), u32(node, "data-position"), u32(node, "data-offset")
        if size is None or (position is None and offset is None):
            raise InputError(f"FIT image {name!r} has embedded data; HAB needs external data (mkimage -E)")
        data_off = fit_off + (position if position is not None else ((total + 3) & ~3) + offset)
        entries.append((name, u32(node, "load"), data_off, size))
        node = fdt.next_subnode(node, quiet=[libfdt.NOTFOUND])

    # SPL puts a device tree without a load address right after the firmware image of the default
    # configuration (U-Boot common/spl/spl_fit.c, spl_fit_append_fdt).
    after_firmware = None
    configs = fdt.path_offset("/configurations", quiet=[libfdt.NOTFOUND])
    default = prop(configs, "default") if configs >= 0 else None
    if default is not None:
        config = fdt.subnode_offset(configs, default.as_str(), quiet=[libfdt.NOTFOUND])
        firmware = prop(config, "firmware") if config >= 0 else None
        if firmware is not None:
            fw = next((e for e in entries if e[0] == firmware.as_str()), None)
            if fw is not None and fw[1] is not None:
                after_firmware = fw[1] + fw[3]
    blocks = []
    for name, load, data_off, size in entries:
        if load is None:
            if after_firmware is None:
                raise InputError(f"FIT image {name!r} has no load address; give the blocks explicitly")
            load = after_firmware
        blocks.append(Block(load, data_off, size))
    return blocks


def locate_parts(image: bytes, soc: str) -> list[tuple[str, Ivt]]:
    if soc not in SOCS:
        raise UsageError(f"unknown SoC family {soc!r} (one of {', '.join(SOCS)})")
    ivts = [i for i in find_ivts(image) if i.csf > i.self_addr]
    if not ivts:
        raise InputError("no IVT with a CSF pointer found: is this a u-boot.imx / flash.bin built for HAB?")
    if soc in ("imx6", "imx7"):
        return [("imx", ivts[0])]
    parts = [("spl", ivts[0])]
    fit = [i for i in ivts[1:] if i.csf == i.self_addr + IVT_SIZE]
    if fit:
        parts.append(("fit", fit[0]))
    return parts


def _csf_limit(image: bytes, ivt: Ivt, all_blocks: Sequence[Block]) -> int:
    """Where the CSF space of a part ends: the next authenticated data, the end of the boot data, or
    the 8 KiB HAB reserves — whichever comes first."""
    start = ivt.csf_offset
    limit = start + hab_csf.MAX_CSF_SIZE
    for b in all_blocks:
        if b.offset >= start:
            limit = min(limit, b.offset)
    bd = boot_data(image, ivt)
    if bd is not None and bd.size:
        # u-boot.imx: boot data starts before the IVT (IVT offset on the media), so map through self.
        end = ivt.file_offset(bd.start + bd.size)
        if end > start:
            limit = min(limit, end)
    return limit


def sign_image(image: bytes, soc: str, keys: HabKeys, *, version: int = 0x42, engine: int = hab_csf.ENG_CAAM,
               unlock_mid: bool | None = None, blocks: dict[str, list[Block]] | None = None,
               signing_time: datetime.datetime) -> SignedImage:
    """Sign every HAB part of ``image``; the CSFs are verified in the final image before returning."""
    blocks = dict(blocks or {})
    parts = locate_parts(image, soc)
    unknown = set(blocks) - {name for name, _ in parts}
    if unknown:
        raise UsageError(f"blocks given for a part the image does not have: {', '.join(sorted(unknown))}")
    plan = []
    for name, ivt in parts:
        part_blocks = blocks.get(name) or (fit_blocks(image, ivt) if name == "fit" else loader_blocks(ivt))
        plan.append((name, ivt, part_blocks))
    every_block = [b for _, _, bl in plan for b in bl]
    out = bytearray(image)
    signed = []
    for name, ivt, part_blocks in plan:
        csf_off = ivt.csf_offset
        for b in part_blocks:
            if b.offset < csf_off < b.offset + b.length:
                raise UsageError(f"{name}: block 0x{b.address:x} 0x{b.offset:x} 0x{b.length:x} overlaps the CSF "
                                 f"at 0x{csf_off:x}")
        # On 8M the ROM-run SPL CSF leaves the CAAM job-ring master IDs unlocked for OP-TEE and Linux,
        # as U-Boot's CSF examples do; the FIT CSF, run later through the HAB API, does not need it.
        part_unlock = (name == "spl") if unlock_mid is None else unlock_mid
        spec = hab_csf.CsfSpec(keys.srk_table, keys.srk_index, keys.csf_cert, keys.img_cert, part_blocks,
                               version=version, engine=engine, unlock_mid=part_unlock, nocak=keys.nocak)
        csf = hab_csf.build_csf(spec, keys.csf_key, keys.img_key, image, signing_time)
        limit = _csf_limit(image, ivt, every_block)
        if csf_off + len(csf) > limit:
            raise UsageError(f"{name}: the CSF ({len(csf)} bytes) does not fit at 0x{csf_off:x} "
                             f"(0x{limit - csf_off:x} bytes free)")
        if len(out) < csf_off:
            out.extend(bytes(csf_off - len(out)))
        end = csf_off + len(csf)
        if len(out) < end:
            out.extend(bytes(end - len(out)))
        out[csf_off:end] = csf
        signed.append(SignedPart(name, ivt.offset, csf_off, csf, list(part_blocks)))
    result = bytes(out)
    for part in signed:
        hab_csf.verify_csf(result[part.csf_offset :], result, part.blocks, keys.srk_table)
    return SignedImage(result, signed)


def verify_image(image: bytes, soc: str, srk_table: bytes | None = None,
                 blocks: dict[str, list[Block]] | None = None) -> list[dict]:
    """Check every HAB part of a signed image; raise VerificationError/InputError on failure."""
    blocks = blocks or {}
    reports = []
    for name, ivt in locate_parts(image, soc):
        part_blocks = blocks.get(name) or (fit_blocks(image, ivt) if name == "fit" else loader_blocks(ivt))
        summary = hab_csf.verify_csf(image[ivt.csf_offset :], image, part_blocks, srk_table)
        reports.append({"part": name, "csf_offset": ivt.csf_offset, **summary})
    return reports
