"""NXP HABv4: ``hab verify`` on an i.MX 6 ``u-boot.imx`` (RSA keys, CSF/IMG certificates) and an
i.MX 8M ``flash.bin`` (SPL part and FIT part, ECDSA P-256 keys, HAB 4.5)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from tests.signing.fuzz.mutator import Field

from . import fdt
from .base import Input, Shop, Target, all_bytes

EPOCH = {"SOURCE_DATE_EPOCH": "1704067200"}


# ------------------------------------------------------------------------------------------------
# Layout, read with the test's own walker: IVT (D1 0020 4x, then LE words entry, reserved1, dcd,
# boot_data, self, csf, reserved2), CSF (D4 <len BE16> <ver>, commands until len; Install Key and
# Authenticate Data point, by offsets from the CSF start, at blobs <tag> <len BE16> <par>).

def ivts(image: bytes) -> list[dict]:
    out, pos = [], image.find(b"\xd1\x00\x20")
    while pos != -1:
        if pos % 4 == 0 and image[pos + 3] & 0xF0 == 0x40:
            words = struct.unpack_from("<7I", image, pos + 4)
            ivt = dict(zip(("entry", "reserved1", "dcd", "boot_data", "self", "csf", "reserved2"), words))
            if ivt["self"] and ivt["entry"] and ivt["csf"] > ivt["self"]:
                out.append({**ivt, "offset": pos, "csf_offset": pos + ivt["csf"] - ivt["self"]})
        pos = image.find(b"\xd1\x00\x20", pos + 1)
    return out


def csf_used(image: bytes, csf: int) -> list[tuple[int, int]]:
    """The bytes of a CSF that HAB reads: header and commands, and each blob a command points to."""
    (length,) = struct.unpack_from(">H", image, csf + 1)
    out, pos = [(csf, csf + length)], csf + 4
    while pos < csf + length:
        tag, clen = image[pos], struct.unpack_from(">H", image, pos + 1)[0]
        if tag in (0xBE, 0xCA):  # Install Key: key_dat; Authenticate Data: aut_start
            (blob,) = struct.unpack_from(">I", image, pos + 8)
            out.append((csf + blob, csf + blob + struct.unpack_from(">H", image, csf + blob + 1)[0]))
        pos += clen
    return out


def csf_fields(image: bytes, csf: int) -> list[Field]:
    out = [Field(csf + 1, 2, "big", "CSF length")]
    (length,) = struct.unpack_from(">H", image, csf + 1)
    pos = csf + 4
    while pos < csf + length:
        tag, clen = image[pos], struct.unpack_from(">H", image, pos + 1)[0]
        out.append(Field(pos + 1, 2, "big", f"CSF command 0x{tag:02x} length"))
        if tag in (0xBE, 0xCA):
            (blob,) = struct.unpack_from(">I", image, pos + 8)
            out += [Field(pos + 8, 4, "big", f"CSF command 0x{tag:02x} data offset"),
                    Field(csf + blob + 1, 2, "big", f"CSF blob 0x{image[csf + blob]:02x} length")]
            if tag == 0xCA:
                out += [Field(pos + 12 + 8 * i + w, 4, "big", f"Authenticate Data block {i} {n}")
                        for i in range((clen - 12) // 8) for w, n in ((0, "address"), (4, "length"))]
        pos += clen
    return out


def ivt_fields(ivt: dict) -> list[Field]:
    names = ("entry", "reserved1", "dcd", "boot_data", "self", "csf", "reserved2")
    return [Field(ivt["offset"] + 4 + 4 * i, 4, "little", f"IVT@0x{ivt['offset']:x} {n}") for i, n in enumerate(names)]


# ------------------------------------------------------------------------------------------------
# Device bytes.
#
# u-boot.imx: the ROM reads the IVT, boot data and DCD and loads U-Boot; all of it up to the CSF is
# authenticated (the blocks start at the IVT). In the CSF it reads the header and commands and the
# SRK table, certificates and signatures they point to. The rest of the CSF area (padding up to
# the boot data's length) is loaded but neither authenticated nor used.
#
# flash.bin: the same for the SPL part; then SPL reads the FIT part: the FIT tree, the images the
# tree places (external data, after the tree), the IVT that follows the tree padded to 4 KiB, and
# that IVT's CSF (as above). Padding between the parts, between the tree and its IVT, between
# images, and after the last CSF is read by no one.


def _loader(image: bytes, ivt: dict) -> list[tuple[int, int]]:
    return [(ivt["offset"], ivt["csf_offset"])] + csf_used(image, ivt["csf_offset"])


def imx_device_bytes(image: bytes) -> list[tuple[int, int]]:
    return _loader(image, ivts(image)[0])


def _fit_part(image: bytes) -> tuple[int, dict]:
    """The FIT tree's offset and the IVT after it."""
    first = ivts(image)[0]
    fit = next(i for i in ivts(image) if i["offset"] > first["offset"])
    # the tree starts 4 KiB-aligned below its IVT
    start = fit["offset"] - 0x1000
    while image[start:start + 4] != b"\xd0\x0d\xfe\xed":
        start -= 0x1000
    return start, fit


def imx8m_device_bytes(image: bytes) -> list[tuple[int, int]]:
    spl = ivts(image)[0]
    start, fit_ivt = _fit_part(image)
    tree = fdt.parse(image[start:])
    out = _loader(image, spl) + [(start, start + tree.header["totalsize"]),
                                 (fit_ivt["offset"], fit_ivt["offset"] + 0x20)]
    props: dict[str, dict[str, bytes]] = {}
    for p in tree.props:
        props.setdefault(p.node, {})[p.name] = image[start + p.value:start + p.end]
    for node, values in props.items():
        if node.startswith("/images/") and "data-size" in values:
            size = int.from_bytes(values["data-size"], "big")
            if "data-position" in values:
                data = start + int.from_bytes(values["data-position"], "big")
            else:
                data = start + ((tree.header["totalsize"] + 3) & ~3) + int.from_bytes(values["data-offset"], "big")
            out.append((data, data + size))
    return out + csf_used(image, fit_ivt["csf_offset"])


def imx_fields(image: bytes) -> list[Field]:
    ivt = ivts(image)[0]
    bd = ivt["offset"] + ivt["boot_data"] - ivt["self"]
    return ivt_fields(ivt) + [Field(bd + 4, 4, "little", "boot data length"),
                              Field(bd, 4, "little", "boot data start")] + csf_fields(image, ivt["csf_offset"])


def imx8m_fields(image: bytes) -> list[Field]:
    spl = ivts(image)[0]
    start, fit_ivt = _fit_part(image)
    tree_fields = [Field(start + f.offset, f.width, f.order, "FIT " + f.name) for f in fdt.length_fields(image[start:])]
    return imx_fields(image) + ivt_fields(fit_ivt) + csf_fields(image, fit_ivt["csf_offset"]) + tree_fields \
        + ([Field(spl["offset"] + 8, 4, "little", "SPL IVT reserved1 (second loader offset)")])


def imx_hot(image: bytes) -> list[tuple[int, int]]:
    ivt = ivts(image)[0]
    return [(ivt["offset"], ivt["offset"] + 0x100)] + csf_used(image, ivt["csf_offset"])


def imx8m_hot(image: bytes) -> list[tuple[int, int]]:
    start, fit_ivt = _fit_part(image)
    tree = fdt.parse(image[start:])
    return imx_hot(image) + [(start, start + tree.header["totalsize"]), (fit_ivt["offset"], fit_ivt["offset"] + 0x20)] \
        + csf_used(image, fit_ivt["csf_offset"])


# ------------------------------------------------------------------------------------------------
# Valid inputs: the images the HAB CLI tests build, signed by token keys through the CLI.


def _pki(shop: Shop, kind: str) -> dict:
    """SRK1..4, and CSF and IMG keys certified by SRK1, all in the token; the SRK table."""
    def make(where: Path):
        srks = [shop.key(kind, f"fuzz-hab-{kind}-srk{i}") for i in range(1, 5)]
        shop.cli(["hab", "cert", "--key", srks[0], "--issuer-key", srks[0], "--cn", "SRK1", "--serial", "1", "--ca",
                  "--out", str(where / "srk1.pem"), *shop.pin], EPOCH)
        pki = {"table": where / "table.bin", "srks": srks}
        for n, name in enumerate(("csf", "img"), 10):
            pki[name] = shop.key(kind, f"fuzz-hab-{kind}-{name}")
            pki[f"{name}_cert"] = where / f"{name}.pem"
            shop.cli(["hab", "cert", "--key", pki[name], "--issuer-key", srks[0], "--issuer-cert",
                      str(where / "srk1.pem"), "--cn", name.upper(), "--serial", str(n), "--out",
                      str(pki[f"{name}_cert"]), *shop.pin], EPOCH)
        shop.cli(["hab", "srk", "--keys", ",".join(srks), "--out-table", str(pki["table"]), *shop.pin])
        return pki
    return shop.once(f"hab-pki-{kind}", make)


def _build(soc: str, kind: str, extra: tuple[str, ...] = ()):
    def build(shop: Shop, case: Path) -> None:
        from tests.signing.cli import test_hab_cli as cli_tests
        pki = _pki(shop, kind)
        src = shop.root / f"hab-{soc}"
        src.mkdir()
        image = cli_tests.make_uboot_imx(src) if soc == "imx6" else cli_tests.make_flash_bin(src)
        shop.cli(["hab", "sign", "--soc", soc, "--in", str(image), "--out", str(case / "signed.bin"),
                  "--srk-table", str(pki["table"]), "--srk-index", "1", "--csf-key", pki["csf"], "--csf-cert",
                  str(pki["csf_cert"]), "--img-key", pki["img"], "--img-cert", str(pki["img_cert"]), *extra,
                  *shop.pin], EPOCH)
        shutil.copy(pki["table"], case / "table.bin")
    return build


def _argv(soc: str):
    def argv(shop: Shop, case: Path) -> list[str]:
        return ["hab", "verify", "--soc", soc, "--in", str(case / "signed.bin"), "--srk-table", str(case / "table.bin")]
    return argv


# The SRK table given on the command line is the one whose hash is fused: every byte counts.
TABLE = Input("table.bin", all_bytes, weight=1)

TARGETS = [
    Target("hab verify imx6", (Input("signed.bin", imx_device_bytes, fields=imx_fields, hot=imx_hot, weight=8), TABLE),
           _build("imx6", "rsa2048"), _argv("imx6")),
    Target("hab verify imx8m", (Input("signed.bin", imx8m_device_bytes, fields=imx8m_fields, hot=imx8m_hot,
                                      weight=8), TABLE),
           _build("imx8m", "p256", ("--hab-version", "4.5")), _argv("imx8m")),
]
