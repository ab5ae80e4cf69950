"""``segway-sign hab``: NXP HABv4 (i.MX 6/7/8M) SRK table and fuses, PKI certificates, CSF signing."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from ..atomic import check_writable, write_file
from ..errors import UsageError
from ..formats.hab import csf as hab_csf
from ..formats.hab import image as hab
from ..formats.hab import pki as hab_pki
from ..formats.hab import srk as hab_srk
from ..reproducible import source_datetime
from .common import EXIT_NO_ANCHOR, IN_FILE, OUT_FILE, emit, load_certificate, load_public_key, output_options, token_options


def split_specs(values) -> list[str]:
    """Repeated options, each possibly a comma-separated list (as srktool's --certs)."""
    return [v for value in values for v in value.split(",") if v]






def parse_hab_version(ctx, param, value):
    return None if value is None else hab_csf.parse_version(value)


def parse_offset(ctx, param, value):
    if value is None:
        return None
    try:
        offset = int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (decimal or 0x…)") from None
    if offset < 0:
        raise click.BadParameter("must not be negative")
    return offset


def parse_srk_hash(ctx, param, value):
    if value is None:
        return None
    text = value.strip().lower().removeprefix("0x")
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise click.BadParameter("an SRK_HASH is 64 hex digits (as `hab srk` prints it)")
    return digest


PARTS_HELP = ("Parts to sign/check, comma-separated (imx8m: spl,fit; imx6/imx7: imx). Default: every part of "
              "the SoC's layout, and a missing one is an error; `--parts spl` covers the SPL part alone.")

# `hab verify` exit status: 0 all checked against the trust anchor, 1 verification failed (or bad
# input), 2 usage error, EXIT_NO_ANCHOR (3) every signature verifies but no trust anchor was given.


@click.group("hab")
def group() -> None:
    """NXP HABv4 secure boot (i.MX 6, 7, 8M): SRK fuses, certificates, signed u-boot.imx / flash.bin."""


@group.command("srk")
@click.option("--keys", "key_specs", multiple=True, required=True, metavar="URI|FILE",
              help="SRK public keys in fuse order (1-4; repeat or comma-separate): pkcs11: URIs, keys, certificates.")
@click.option("--out-table", required=True, type=OUT_FILE, help="SRK table (SRK_1_2_3_4_table.bin).")
@click.option("--out-fuse", type=OUT_FILE, help="SRK_HASH as srktool writes it (SRK_1_2_3_4_fuse.bin).")
@click.option("--fuse-format", type=click.Choice(["0", "1"]), default="1", show_default=True,
              help="1: 32 fuses per word (the hash bytes); 0: 8 fuses per word.")
@click.option("--soc", type=click.Choice(sorted(hab_srk.FUSE_LAYOUTS)), default="imx8m", show_default=True,
              help="SoC family, for the U-Boot fuse bank/word numbers.")
@click.option("--ca/--no-ca", default=True, show_default=True,
              help="SRKs are CAs (sign CSF/IMG certificates); --no-ca for fast authentication.")
@token_options
@output_options
def srk_cmd(key_specs, out_table, out_fuse, fuse_format, soc, ca, token, force, as_json):
    """Build the SRK table and SRK_HASH; print the U-Boot `fuse prog` lines (irreversible!)."""
    check_writable(out_table, force)
    if out_fuse is not None:
        check_writable(out_fuse, force)
    keys = [load_public_key(spec, token) for spec in split_specs(key_specs)]
    table = hab_srk.srk_table(keys, ca=ca)
    digest = hab_srk.srk_hash(table)
    words = hab_srk.hash_fuse_words(digest)
    lines = hab_srk.fuse_prog_lines(words, soc)
    write_file(out_table, table, force=force)
    if out_fuse is not None:
        write_file(out_fuse, hab_srk.fuse_file(digest, int(fuse_format)), force=force)
    result = {"srk_table": str(out_table), "srk_fuse": str(out_fuse) if out_fuse else None, "keys": len(keys),
              "srk_hash": digest.hex(), "fuse_words": [f"0x{w:08X}" for w in words], "soc": soc,
              "uboot_commands": lines}
    emit(result, as_json, f"SRK_HASH {digest.hex()}\n# U-Boot (burns OTP fuses, cannot be undone):\n"
         + "\n".join(lines))


@group.command("cert")
@click.option("--key", "key_spec", required=True, metavar="URI|FILE", help="The certified key (public part).")
@click.option("--issuer-key", "issuer_uri", required=True, metavar="URI", help="Signing SRK (pkcs11: URI).")
@click.option("--issuer-cert", type=IN_FILE, help="The SRK's certificate; omit for a self-signed SRK certificate.")
@click.option("--cn", required=True, help="Subject common name (e.g. CSF1_1_sha256_2048_65537_v3_usr).")
@click.option("--serial", type=click.IntRange(1), required=True, help="Serial number (unique per issuer).")
@click.option("--ca/--no-ca", default=False, show_default=True, help="CA flag: on for SRKs, off for CSF/IMG keys.")
@click.option("--days", type=click.IntRange(1), default=3650, show_default=True)
@click.option("--out", "out_path", required=True, type=OUT_FILE, help="Certificate (PEM).")
@token_options
@output_options
def cert_cmd(key_spec, issuer_uri, issuer_cert, cn, serial, ca, days, out_path, token, force, as_json):
    """Issue an SRK, CSF or IMG certificate with the SRK key in the token (validity from SOURCE_DATE_EPOCH)."""
    check_writable(out_path, force)
    subject_key = load_public_key(key_spec, token)
    issuer_key = token.open_key(issuer_uri)
    parent = load_certificate(issuer_cert) if issuer_cert else None
    not_before = source_datetime()
    cert = hab_pki.issue_certificate(subject_key, cn, issuer_key, parent, ca=ca, serial=serial,
                                     not_before=not_before, days=days)
    if parent is not None:
        hab_csf.check_issued_by(cert, parent.public_key(), "new certificate")
    write_file(out_path, cert.public_bytes(serialization.Encoding.PEM), force=force)
    emit({"certificate": str(out_path), "subject": cert.subject.rfc4514_string(), "serial": serial, "ca": ca},
         as_json, f"wrote {out_path} ({cert.subject.rfc4514_string()}, serial {serial})")


def _blocks(imx, spl, fit) -> dict:
    given = {"imx": imx, "spl": spl, "fit": fit}
    return {part: hab.parse_blocks(text) for part, text in given.items() if text}


def _part_summary(part) -> dict:
    return {"part": part.name, "ivt_offset": f"0x{part.ivt_offset:x}", "csf_offset": f"0x{part.csf_offset:x}",
            "csf_size": len(part.csf),
            "blocks": [f"0x{b.address:x} 0x{b.offset:x} 0x{b.length:x}" for b in part.blocks]}


@group.command("sign")
@click.option("--soc", required=True, type=click.Choice(hab.SOCS),
              help="imx6/imx7: u-boot.imx with one IVT; imx8m: flash.bin (SPL part and FIT part).")
@click.option("--in", "in_path", required=True, type=IN_FILE, help="u-boot.imx or flash.bin built for HAB.")
@click.option("--out", "out_path", required=True, type=OUT_FILE, help="Signed image.")
@click.option("--srk-table", required=True, type=IN_FILE, help="SRK table (from `hab srk` or srktool).")
@click.option("--srk-index", required=True, type=click.IntRange(1, 4), help="SRK that issued the certificates (1-4).")
@click.option("--csf-key", metavar="URI", help="CSF key (pkcs11: URI).")
@click.option("--csf-cert", type=IN_FILE, help="CSF key certificate, issued by the SRK.")
@click.option("--img-key", metavar="URI", help="Image key (pkcs11: URI).")
@click.option("--img-cert", type=IN_FILE, help="Image key certificate, issued by the SRK.")
@click.option("--srk-key", metavar="URI", help="Fast authentication: the SRK signs directly (no CSF/IMG keys).")
@click.option("--srk-cert", type=IN_FILE, help="Fast authentication: the SRK's certificate.")
@click.option("--hab-version", callback=parse_hab_version, metavar="4.N",
              help="CSF header version (default 4.2 for imx6/imx7, 4.3 for imx8m); 4.5 for ECDSA keys (i.MX 8M Plus).")
@click.option("--engine", type=click.Choice(sorted(hab_csf.ENGINES)), default="caam", show_default=True,
              help="Hash engine HAB uses (CST adds Unlock RNG when it is CAAM).")
@click.option("--unlock-mid/--no-unlock-mid", default=None,
              help="Add [Unlock] Engine=CAAM Features=MID (default: in the imx8m SPL CSF only).")
@click.option("--blocks", "imx_blocks", metavar="TEXT", help="imx6/imx7: blocks 'addr off len, …' (default: from the IVT).")
@click.option("--spl-blocks", metavar="TEXT", help="imx8m SPL part: as imx-mkimage prints `spl hab block`.")
@click.option("--fit-blocks", metavar="TEXT", help="imx8m FIT part: as `sld hab block` + print_fit_hab (default: from the FIT).")
@click.option("--parts", "parts_text", metavar="LIST", help=PARTS_HELP)
@click.option("--fit-offset", callback=parse_offset, metavar="OFFSET",
              help="imx8m: file offset of the FIT part (default: recorded in the SPL IVT, else the first FIT "
                   "on a sector boundary after the SPL part).")
@click.option("--csf-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write each CSF (csf-<part>.bin) into this new directory.")
@token_options
@output_options
def sign_cmd(soc, in_path, out_path, srk_table, srk_index, csf_key, csf_cert, img_key, img_cert, srk_key, srk_cert,
             hab_version, engine, unlock_mid, imx_blocks, spl_blocks, fit_blocks, parts_text, fit_offset, csf_dir,
             token, force, as_json):
    """Build and sign the CSF(s) with keys in the token and place them where the IVTs point."""
    check_writable(out_path, force)
    if csf_dir is not None:
        check_writable(csf_dir, force)
    parts = hab.parse_parts(soc, parts_text)
    blocks = _blocks(imx_blocks, spl_blocks, fit_blocks)
    image = in_path.read_bytes()
    hab.locate_parts(image, soc, parts, fit_offset)  # an image of another SoC family: refused before the token
    pki = (csf_key, csf_cert, img_key, img_cert)
    if srk_key or srk_cert:
        if any(pki) or not (srk_key and srk_cert):
            raise UsageError("fast authentication takes --srk-key and --srk-cert, and no CSF/IMG keys")
        keys = hab.HabKeys(srk_table.read_bytes(), srk_index - 1, token.open_key(srk_key),
                           load_certificate(srk_cert), nocak=True)
    else:
        if not all(pki):
            raise UsageError("give --csf-key, --csf-cert, --img-key and --img-cert (or --srk-key/--srk-cert)")
        keys = hab.HabKeys(srk_table.read_bytes(), srk_index - 1, token.open_key(csf_key),
                           load_certificate(csf_cert), token.open_key(img_key), load_certificate(img_cert))
    if hab_version is None:
        hab_version = 0x43 if soc == "imx8m" else 0x42  # as U-Boot's CSF examples for these SoCs
    signed = hab.sign_image(image, soc, keys, version=hab_version, engine=hab_csf.ENGINES[engine],
                            unlock_mid=unlock_mid, blocks=blocks,
                            signing_time=source_datetime(), parts=parts, fit_offset=fit_offset)
    if csf_dir is not None:
        from ..atomic import output_dir

        with output_dir(csf_dir, force) as tmp:
            for part in signed.parts:
                (tmp / f"csf-{part.name}.bin").write_bytes(part.csf)
    write_file(out_path, signed.image, force=force)
    result = {"output": str(out_path), "soc": soc, "srk_index": srk_index,
              "parts": [_part_summary(p) for p in signed.parts]}
    lines = [f"signed {out_path}"] + [f"  {p['part']}: CSF at {p['csf_offset']} ({p['csf_size']} bytes), blocks "
                                      + "; ".join(p["blocks"]) for p in result["parts"]]
    unsigned = [p for p in hab.LAYOUTS[soc] if p not in parts]
    if unsigned:
        result["parts_not_signed"] = unsigned
        lines.append(f"  not signed (--parts): {', '.join(unsigned)}")
    emit(result, as_json, "\n".join(lines))


@group.command("verify")
@click.option("--soc", required=True, type=click.Choice(hab.SOCS))
@click.option("--in", "in_path", required=True, type=IN_FILE, help="Signed u-boot.imx or flash.bin.")
@click.option("--srk-table", type=IN_FILE, help="Trust anchor: the SRK table whose hash is fused.")
@click.option("--srk-hash", callback=parse_srk_hash, metavar="HEX",
              help="Trust anchor: the fused SRK_HASH (64 hex digits, as `hab srk` prints it).")
@click.option("--srk-fuse", type=IN_FILE, help="Trust anchor: SRK fuse file (`hab srk --out-fuse`, srktool -f 0/1).")
@click.option("--parts", "parts_text", metavar="LIST", help=PARTS_HELP)
@click.option("--fit-offset", callback=parse_offset, metavar="OFFSET",
              help="imx8m: file offset where the FIT part must be (default: recorded in the SPL IVT, else the "
                   "first FIT on a sector boundary after the SPL part).")
@click.option("--blocks", "imx_blocks", metavar="TEXT")
@click.option("--spl-blocks", metavar="TEXT")
@click.option("--fit-blocks", metavar="TEXT")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(soc, in_path, srk_table, srk_hash, srk_fuse, parts_text, fit_offset, imx_blocks, spl_blocks,
               fit_blocks, as_json):
    """Check every part HAB authenticates as the ROM and SPL would: SRK → certificates → CSF signature →
    every loaded block. Exit 0: OK against the trust anchor; 1: refused; 3: signatures OK, but no
    trust anchor (--srk-table, --srk-hash or --srk-fuse) was given."""
    parts = hab.parse_parts(soc, parts_text)
    table = srk_table.read_bytes() if srk_table else None
    anchors = {}
    if table is not None:
        anchors["--srk-table"] = hab_srk.srk_hash(table)
    if srk_hash is not None:
        anchors["--srk-hash"] = srk_hash
    if srk_fuse is not None:
        anchors["--srk-fuse"] = hab_srk.fuse_file_digest(srk_fuse.read_bytes())
    if len(set(anchors.values())) > 1:
        raise UsageError("the trust anchors disagree: " + ", ".join(f"{k} gives {v.hex()}" for k, v in anchors.items()))
    expected = next(iter(anchors.values()), None)
    reports = hab.verify_image(in_path.read_bytes(), soc, table, _blocks(imx_blocks, spl_blocks, fit_blocks),
                               parts=parts, srk_hash=expected, fit_offset=fit_offset)
    skipped = [p for p in hab.LAYOUTS[soc] if p not in parts]
    digest = reports[0]["srk_hash"]
    result = {"input": str(in_path), "soc": soc, "srk_hash": digest, "trust_anchor": sorted(anchors) or None,
              "parts_checked": list(parts), "parts_not_checked": skipped,
              "parts": [{"part": r["part"], "ivt_offset": f"0x{r['ivt_offset']:x}",
                         "csf_offset": f"0x{r['csf_offset']:x}", "srk_index": r["srk_index"] + 1,
                         "blocks": [f"0x{a:x} 0x{o:x} 0x{n:x}" for a, o, n in r["blocks"]]} for r in reports]}
    checked = ", ".join(f"{r['part']} (SRK {r['srk_index'] + 1})" for r in reports)
    scope = f"checked {checked} only, not {', '.join(skipped)} (--parts)" if skipped else \
        f"checked {checked}" + (f": every part of the {soc} layout" if len(reports) > 1 else "")
    if expected is None:
        emit(result, as_json, f"OK (signature only: no trust anchor given) {in_path}: {scope}; the CSFs' SRK_HASH "
             f"{digest}")
        sys.exit(EXIT_NO_ANCHOR)
    emit(result, as_json, f"OK {in_path}: {scope}; SRK_HASH {digest}")
