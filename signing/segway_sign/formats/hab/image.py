"""HABv4 image signing for i.MX 6/7 (``u-boot.imx``) and i.MX 8M (``flash.bin``: SPL part and FIT part).

Each part starts at an IVT; HAB authenticates the blocks of that part with the CSF the IVT's ``csf``
pointer designates. Blocks are derived from the IVTs (and the FIT's external-data layout) the way
imx-mkimage prints them (``spl hab block`` / ``sld hab block`` + ``print_fit_hab``), or given
explicitly. Keys: SRK table (file), CSF and IMG keys with their certificates under the chosen SRK.

Signing and verifying follow the same layout: on i.MX 8M both the SPL part (run by the ROM) and the
FIT part (U-Boot proper, TF-A, run by SPL) are required, where SPL reads the FIT, and every range a
part loads must be authenticated by its CSF; ``parts`` narrows that explicitly.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass, field
from typing import Sequence

from cryptography import x509

from ...errors import InputError, SegwayError, UsageError, VerificationError
from ..fit import tree as fit_tree
from . import csf as hab_csf
from . import srk as hab_srk
from .csf import Block
from .ivt import IVT_SIZE, Ivt, boot_data, find_ivts, parse_ivt

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
    fit_off, pad = _fit_start(image, ivt)
    blocks = [Block(ivt.self_addr - pad, fit_off, pad + IVT_SIZE)]
    entries, after_firmware = _fit_layout(image, ivt)
    for name, load, data_off, size in entries:
        if load is None:
            if after_firmware is None:
                raise InputError(f"FIT image {name!r} has no load address; give the blocks explicitly")
            load = after_firmware
        if not 0 <= load <= 0xFFFFFFFF:
            raise InputError(f"FIT image {name!r} ends beyond the 32-bit address space")
        blocks.append(Block(load, data_off, size))
    return blocks


def _fit_entries(image: bytes, ivt: Ivt) -> list[tuple[str, int | None, int, int]]:
    return _fit_layout(image, ivt)[0]


def _fit_layout(image: bytes, ivt: Ivt) -> tuple[list[tuple[str, int | None, int, int]], int | None]:
    """The FIT's images as (name, load address or None, file offset, size), and where SPL puts an
    image without a load address."""
    import libfdt

    fit_off, pad = _fit_start(image, ivt)
    try:
        # libfdt trusts the structure it is given: a damaged tree must be refused before it parses.
        fdt = fit_tree.open_fdt(image[fit_off : fit_off + pad])
        images = fdt.path_offset("/images")
    except (libfdt.FdtException, InputError) as err:
        raise InputError(f"FIT at 0x{fit_off:x}: {err}") from None
    try:
        return _fit_image_entries(fdt, images, image, fit_off)
    except (libfdt.FdtException, struct.error, ValueError, UnicodeDecodeError) as err:
        raise InputError(f"FIT at 0x{fit_off:x} is malformed: {err}") from None


def _fit_image_entries(fdt, images: int, image: bytes, fit_off: int):
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
    return entries, after_firmware


# The parts HAB authenticates, per SoC family, in boot order: i.MX 6/7 boot one u-boot.imx; on i.MX 8M
# the ROM authenticates the SPL part, and SPL authenticates the FIT part (U-Boot proper, TF-A, TEE,
# device trees) through the ROM's HAB API before jumping to it.
LAYOUTS = {"imx6": ("imx",), "imx7": ("imx",), "imx8m": ("spl", "fit")}
# i.MX 8M on-chip RAM (TCM, OCRAM) lies below this address, DDR far above: where an SPL IVT may point.
ON_CHIP_RAM_END = 0x0100_0000
SECTOR = 0x200  # SPL reads the FIT from whole sectors of the boot media


def parse_parts(soc: str, text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The parts to sign or check: the SoC's whole layout when ``text`` is None, else a subset given
    as ``spl,fit`` (or a list), returned in boot order."""
    if soc not in LAYOUTS:
        raise UsageError(f"unknown SoC family {soc!r} (one of {', '.join(SOCS)})")
    layout = LAYOUTS[soc]
    if text is None:
        return layout
    if isinstance(text, str):
        text = text.split(",")
    if not isinstance(text, (list, tuple)) or not all(isinstance(n, str) for n in text):
        raise UsageError("parts are given as names, e.g. 'spl,fit'")
    names = [n.strip() for n in text if n.strip()]
    if not names:
        raise UsageError("--parts names no part")
    unknown = [n for n in names if n not in layout]
    if unknown:
        raise UsageError(f"{soc} images have no part {unknown[0]!r} (parts: {', '.join(layout)})")
    return tuple(n for n in layout if n in names)


@dataclass(frozen=True)
class FitPart:
    """Where the i.MX 8M FIT part lies: the FIT tree at ``offset``, padded to ``pad`` bytes, then its IVT."""

    offset: int
    pad: int
    ivt: Ivt
    how: str  # how it was found, for messages


def _spl_end(image: bytes, spl: Ivt) -> int:
    """End (file offset) of what the ROM loads for the SPL part: its boot data, CSF area included."""
    end = spl.csf_offset + hab_csf.MAX_CSF_SIZE
    bd = boot_data(image, spl)
    if bd is not None and bd.size:
        end = max(spl.csf_offset, spl.file_offset(bd.start + bd.size))
    return end


def locate_fit(image: bytes, spl: Ivt, fit_offset: int | None = None) -> FitPart:
    """The FIT part of an i.MX 8M flash.bin, or VerificationError saying why it is not there.

    Where it must be: ``fit_offset`` when given; else where the SPL IVT records it (imx-mkimage
    writes the second loader's offset from the SPL IVT into its ``reserved1`` word, inside the
    ROM-authenticated SPL block); else the first FIT tree on a sector boundary after the SPL part
    (U-Boot's mkimage -T imx8mimage records nothing). SPL reads the FIT from a fixed sector of
    the boot media, so a FIT tree anywhere else is not the one that boots.
    """
    if fit_offset is not None:
        if fit_offset < 0:
            raise UsageError("--fit-offset must not be negative")
        off, how = fit_offset, f"at 0x{fit_offset:x} (as given)"
    elif spl.reserved1:
        off = spl.offset + spl.reserved1
        how = f"at 0x{off:x} (where the SPL IVT records it)"
    else:
        start = (_spl_end(image, spl) + SECTOR - 1) & ~(SECTOR - 1)
        off = start
        while off < len(image) and image[off : off + 4] != FDT_MAGIC:
            off += SECTOR
        if off >= len(image):
            raise VerificationError(f"fit part missing: no FIT (U-Boot proper, TF-A) on a sector boundary after "
                                    f"the SPL part, which ends at 0x{start:x} (the image has {len(image)} bytes); "
                                    "--parts spl checks the SPL part alone")
        how = f"at 0x{off:x} (the first on a sector boundary after the SPL part)"
    if off + 0x28 > len(image):
        raise VerificationError(f"fit part missing: the image ends at 0x{len(image):x}, before the FIT {how}")
    if image[off : off + 4] != FDT_MAGIC:
        raise VerificationError(f"fit part missing: no FIT tree {how} (found {image[off:off + 4].hex()})")
    (total,) = struct.unpack_from(">I", image, off + 4)
    if total < 0x28 or off + total > len(image):
        raise VerificationError(f"fit part truncated: the FIT tree {how} is 0x{total:x} bytes long, but the "
                                f"image ends 0x{len(image) - off:x} bytes after its start")
    pad = (total + 0xFFF) & ~0xFFF  # U-Boot SPL: the IVT follows the tree padded to 4 KiB
    ivt_off = off + pad
    try:
        ivt = parse_ivt(image, ivt_off)
    except InputError as err:
        raise VerificationError(f"fit part: {err}, where the FIT tree {how} puts its IVT") from None
    # U-Boot's check of this IVT before the HAB call (arch/arm/mach-imx/hab.c, validate_ivt), and
    # the place of the CSF imx-mkimage reserves (right after the IVT).
    problems = []
    if not ivt.entry:
        problems.append("entry is 0")
    if ivt.dcd:
        problems.append("it points to a DCD")
    if ivt.reserved1 or ivt.reserved2:
        problems.append("reserved words are not 0")
    if ivt.csf != ivt.self_addr + IVT_SIZE:
        problems.append(f"csf 0x{ivt.csf:x} is not right after the IVT (0x{ivt.self_addr + IVT_SIZE:x})")
    if ivt.self_addr < pad:
        problems.append(f"self 0x{ivt.self_addr:x} leaves no room for the FIT tree below it")
    if problems:
        raise VerificationError(f"fit part: the IVT at 0x{ivt_off:x} is not one SPL accepts: {'; '.join(problems)}")
    return FitPart(off, pad, ivt, how)


def locate_parts(image: bytes, soc: str, parts: Sequence[str] | None = None,
                 fit_offset: int | None = None) -> list[tuple[str, Ivt]]:
    """The IVT of each part in ``parts`` (default: the SoC's whole layout); VerificationError when
    one the layout expects is missing."""
    wanted = parse_parts(soc, parts)
    ivts = [i for i in find_ivts(image) if i.csf > i.self_addr]
    if not ivts:
        raise InputError("no IVT with a CSF pointer found: is this a u-boot.imx / flash.bin built for HAB?")
    if soc in ("imx6", "imx7"):
        later = [i for i in ivts[1:] if i.offset >= ivts[0].csf_offset and i.csf == i.self_addr + IVT_SIZE]
        if later:
            raise VerificationError(f"the image has a second HAB part (IVT at 0x{later[0].offset:x}) that a {soc} "
                                    "u-boot.imx does not have: for an i.MX 8M flash.bin give --soc imx8m")
        return [("imx", ivts[0])]
    spl = ivts[0]
    if spl.self_addr >= ON_CHIP_RAM_END:
        # An i.MX 8M SPL runs from on-chip RAM (TCM/OCRAM, below 16 MiB); u-boot.imx loads to DDR.
        raise VerificationError(f"the IVT at 0x{spl.offset:x} loads the image to DDR (self 0x{spl.self_addr:x}), as an "
                                "i.MX 6/7 u-boot.imx does, not to on-chip RAM as an i.MX 8M SPL: for a u-boot.imx "
                                "give --soc imx6 or imx7")
    found = [("spl", spl)]
    if "fit" in wanted:
        found.append(("fit", locate_fit(image, spl, fit_offset).ivt))
    return [(name, ivt) for name, ivt in found if name in wanted]


def _part_blocks(image: bytes, name: str, ivt: Ivt) -> list[Block]:
    return fit_blocks(image, ivt) if name == "fit" else loader_blocks(ivt)


def required_ranges(image: bytes, name: str, ivt: Ivt) -> list[tuple[str, int | None, int, int]]:
    """What a part's CSF must authenticate: (what, load address or None when any, file offset, length).

    The loader (IVT, boot data, SPL or U-Boot, up to the CSF); for the FIT part the tree with its
    IVT, and every image of the FIT, at its load address when it has one (a device tree without
    one goes where SPL places it, which depends on the U-Boot version)."""
    if name != "fit":
        (block,) = loader_blocks(ivt)
        return [(f"the {'SPL' if name == 'spl' else 'loader'} image", block.address, block.offset, block.length)]
    tree = fit_blocks(image, ivt)[0]
    ranges: list[tuple[str, int | None, int, int]] = [("the FIT tree and its IVT", tree.address, tree.offset,
                                                        tree.length)]
    for entry_name, load, data_off, size in _fit_entries(image, ivt):
        if size:
            ranges.append((f"FIT image {entry_name!r}", load, data_off, size))
    return ranges


def check_coverage(image: bytes, name: str, ivt: Ivt, blocks: Sequence[Block]) -> None:
    """Refuse a block list that leaves part of what the part loads unauthenticated."""
    for what, address, offset, length in required_ranges(image, name, ivt):
        spans = sorted((b.offset, b.offset + b.length) for b in blocks
                       if address is None or b.address - b.offset == address - offset)
        pos, end = offset, offset + length
        for lo, hi in spans:
            if lo <= pos < hi:
                pos = hi
            if pos >= end:
                break
        if pos < end:
            at = f"load address 0x{address:x}, " if address is not None else ""
            raise VerificationError(f"{name} part: {what} ({at}file offset 0x{offset:x}, 0x{length:x} bytes) is "
                                    f"not authenticated by the CSF's blocks from 0x{pos:x} on")


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
               signing_time: datetime.datetime, parts: Sequence[str] | None = None,
               fit_offset: int | None = None) -> SignedImage:
    """Sign every HAB part of ``image`` (or only ``parts``); the result is checked with
    ``verify_image`` against the SRK table before returning."""
    blocks = dict(blocks or {})
    wanted = parse_parts(soc, parts)
    unknown = set(blocks) - set(LAYOUTS[soc])
    if unknown:
        raise UsageError(f"blocks given for a part the image does not have: {', '.join(sorted(unknown))}")
    unused = set(blocks) - set(wanted)
    if unused:
        raise UsageError(f"blocks given for a part not signed (--parts): {', '.join(sorted(unused))}")
    located = locate_parts(image, soc, wanted, fit_offset)
    plan = []
    for name, ivt in located:
        part_blocks = blocks.get(name) or _part_blocks(image, name, ivt)
        try:
            check_coverage(image, name, ivt, part_blocks)
        except VerificationError as err:
            raise UsageError(str(err)) from None
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
    # The signed image goes through the same checks as `hab verify`: the parts found again where
    # the layout puts them, each CSF against the SRK table, every loaded range authenticated.
    verify_image(result, soc, keys.srk_table, blocks, parts=wanted, fit_offset=fit_offset)
    return SignedImage(result, signed)


def verify_image(image: bytes, soc: str, srk_table: bytes | None = None,
                 blocks: dict[str, list[Block]] | None = None, *, parts: Sequence[str] | None = None,
                 srk_hash: bytes | None = None, fit_offset: int | None = None) -> list[dict]:
    """Check the HAB parts of a signed image as the ROM and SPL would; raise on failure.

    ``parts`` defaults to every part of the SoC's layout (i.MX 8M: SPL and FIT), and a part the
    layout expects but the image lacks is an error. Each CSF is replayed against the image (SRK
    table, certificates, CSF and data signatures) and must authenticate everything its part
    loads. All parts must install the same SRK table, which must equal ``srk_table`` and hash to
    ``srk_hash`` when they are given (the trust anchor: the value in the SRK_HASH fuses).
    Returns one report per part, in boot order.
    """
    blocks = blocks or {}
    wanted = parse_parts(soc, parts)
    unknown = set(blocks) - set(wanted)
    if unknown:
        raise UsageError(f"blocks given for a part not checked: {', '.join(sorted(unknown))}")
    if srk_hash is not None and len(srk_hash) != 32:
        raise UsageError("an SRK_HASH is 32 bytes (64 hex digits)")
    reports = []
    tables: list[tuple[str, bytes]] = []
    for name, ivt in locate_parts(image, soc, wanted, fit_offset):
        try:
            part_blocks = blocks.get(name) or _part_blocks(image, name, ivt)
            summary = hab_csf.verify_csf(image[ivt.csf_offset :], image, part_blocks, srk_table)
            check_coverage(image, name, ivt, part_blocks)
        except SegwayError as err:
            message = str(err)
            if not message.startswith(f"{name} part"):
                message = f"{name} part (IVT at 0x{ivt.offset:x}, CSF at 0x{ivt.csf_offset:x}): {message}"
            raise type(err)(message) from None
        table = summary.pop("srk_table")
        if tables and table != tables[0][1]:
            raise VerificationError(f"{name} part: its CSF installs another SRK table than the {tables[0][0]} "
                                    "part's (the device fuses one SRK_HASH)")
        tables.append((name, table))
        digest = hab_srk.srk_hash(table)
        if srk_hash is not None and digest != srk_hash:
            raise VerificationError(f"{name} part: its SRK table hashes to {digest.hex()}, not the expected "
                                    f"SRK_HASH {srk_hash.hex()}")
        reports.append({"part": name, "ivt_offset": ivt.offset, "csf_offset": ivt.csf_offset,
                        "srk_hash": digest.hex(), **summary})
    return reports
