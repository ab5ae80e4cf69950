"""``segway-sign ahab``: AHAB containers (i.MX 8QXP/8QM/8ULP/93): SRK table and hash, container signing
with an SRK or with an SGK the SRK certifies."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from ..atomic import check_writable, write_file
from ..errors import InputError, UsageError
from ..formats import ahab
from .common import IN_FILE, OUT_FILE, emit, load_public_key, output_options, token_options
from .hab import split_specs


def parse_offsets(ctx, param, values):
    out = []
    for value in split_specs(values):
        try:
            out.append(int(value, 0))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number") from None
    return out or None


def parse_permissions(ctx, param, values):
    names = split_specs(values)
    if not names:
        return None
    try:
        return ahab.permission_bits(names)
    except UsageError as err:
        raise click.BadParameter(str(err)) from None


def parse_uuid(ctx, param, value):
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value.replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != ahab.UUID_SIZE:
        raise click.BadParameter(f"{value!r} is not 16 bytes of hex")
    return raw


@click.group("ahab")
def group() -> None:
    """NXP AHAB secure boot (i.MX 8QXP/8QM/8DXL/8ULP, i.MX 93): SRK hash, signed containers."""


@group.command("srk")
@click.option("--keys", "key_specs", multiple=True, required=True, metavar="URI|FILE",
              help="The four SRK public keys in order (repeat or comma-separate): pkcs11: URIs, keys, certificates.")
@click.option("--out-table", required=True, type=OUT_FILE, help="SRK table to embed in containers.")
@click.option("--out-fuse", type=OUT_FILE, help="The SRK hash (binary) to fuse.")
@click.option("--soc", type=click.Choice(sorted(ahab.DEFAULT_FUSE_HASH)), default="imx93", show_default=True,
              help="SoC: sets the SRK hash algorithm and the U-Boot fuse words.")
@click.option("--fuse-hash", type=click.Choice(["sha256", "sha512"]),
              help="Override the SRK hash algorithm (default: SHA-512 for 8QXP/8QM, SHA-256 for 8ULP/93).")
@click.option("--digest", type=click.Choice(sorted(ahab.HASHES)),
              help="Signature digest recorded for every SRK (default: by key: P-256 SHA-256, P-384 SHA-384 …).")
@click.option("--rsa-pss", is_flag=True, help="RSA SRKs sign with RSA-PSS (as SPSDK does for ELE parts).")
@click.option("--ca", is_flag=True, help="Set the CA flag: the SRKs may certify SGKs (`ahab sign --sgk-key`).")
@token_options
@output_options
def srk_cmd(key_specs, out_table, out_fuse, soc, fuse_hash, digest, rsa_pss, ca, token, force, as_json):
    """Build the SRK table and its hash; print the U-Boot `fuse prog` lines (irreversible!)."""
    check_writable(out_table, force)
    if out_fuse is not None:
        check_writable(out_fuse, force)
    keys = [load_public_key(spec, token) for spec in split_specs(key_specs)]
    table = ahab.srk_table(keys, ca=ca, digest=digest, rsa_pss=rsa_pss)
    algorithm = fuse_hash or ahab.DEFAULT_FUSE_HASH[soc]
    srk_hash = ahab.srk_hash(table, algorithm)
    words = ahab.fuse_words(srk_hash)
    layout = ahab.FUSE_LAYOUTS.get(soc)
    lines = ahab.fuse_prog_lines(words, soc) if layout and len(words) == layout[2] else []
    write_file(out_table, table, force=force)
    if out_fuse is not None:
        write_file(out_fuse, srk_hash, force=force)
    result = {"srk_table": str(out_table), "srk_fuse": str(out_fuse) if out_fuse else None, "soc": soc,
              "hash_algorithm": algorithm, "srk_hash": srk_hash.hex(),
              "fuse_words": [f"0x{w:08X}" for w in words], "uboot_commands": lines}
    text = f"SRK hash ({algorithm}) {srk_hash.hex()}\n"
    text += ("# U-Boot (burns OTP fuses, cannot be undone):\n" + "\n".join(lines)) if lines else \
        "# fuse words: " + " ".join(result["fuse_words"])
    emit(result, as_json, text)


@group.command("sign")
@click.option("--in", "in_path", required=True, type=IN_FILE, help="Image with AHAB containers (e.g. flash.bin).")
@click.option("--out", "out_path", required=True, type=OUT_FILE, help="Signed image.")
@click.option("--srk-table", required=True, type=IN_FILE, help="SRK table (from `ahab srk` or srktool -a).")
@click.option("--srk-index", required=True, type=click.IntRange(1, 4), help="SRK that signs (1-4).")
@click.option("--key", "key_uri", required=True, metavar="URI",
              help="That SRK's private key (pkcs11: URI); with --sgk-key it signs only the SGK certificate.")
@click.option("--sgk-key", "sgk_uri", metavar="URI",
              help="Sign the containers with this SGK (pkcs11: URI, same key type as the SRK) under an AHAB "
                   "certificate the SRK signs.")
@click.option("--sgk-permissions", "sgk_permissions", multiple=True, callback=parse_permissions, metavar="NAME",
              help="SGK certificate permissions (repeat or comma-separate; default: container): "
                   + ", ".join(ahab.CERT_PERMISSIONS) + ".")
@click.option("--sgk-uuid", callback=parse_uuid, metavar="HEX",
              help="Bind the SGK certificate to one device: its 128-bit UUID (32 hex digits).")
@click.option("--container-offset", "offsets", multiple=True, callback=parse_offsets, metavar="N",
              help="Container(s) to sign (default: every container not signed by NXP).")
@click.option("--revoke-mask", type=click.IntRange(0, 15), help="SRK revocation mask written into the container flags.")
@token_options
@output_options
def sign_cmd(in_path, out_path, srk_table, srk_index, key_uri, sgk_uri, sgk_permissions, sgk_uuid, offsets,
             revoke_mask, token, force, as_json):
    """Sign AHAB containers with an SRK held in the token, or with an SGK certified by that SRK."""
    check_writable(out_path, force)
    if sgk_uri is None and (sgk_uuid is not None or sgk_permissions is not None):
        raise UsageError("--sgk-permissions and --sgk-uuid need --sgk-key")
    if sgk_permissions is None:
        sgk_permissions = ahab.PERM_CONTAINER
    key = token.open_key(key_uri)
    sgk = token.open_key(sgk_uri) if sgk_uri is not None else None
    signed, done = ahab.sign_image(in_path.read_bytes(), srk_table.read_bytes(), srk_index - 1, key, offsets,
                                   revoke_mask, sgk, sgk_permissions, sgk_uuid)
    reports = [ahab.verify_container(signed, off, srk_table.read_bytes()) for off in done]
    write_file(out_path, signed, force=force)
    result = {"output": str(out_path), "containers": [_container_json(r) for r in reports]}
    emit(result, as_json, f"signed {out_path}: containers " + ", ".join(f"0x{o:x}" for o in done)
         + (f" with an SGK certified by SRK {srk_index}" if sgk else f" with SRK {srk_index}"))


@group.command("verify")
@click.option("--in", "in_path", required=True, type=IN_FILE)
@click.option("--srk-table", type=IN_FILE, help="Expected SRK table.")
@click.option("--container-offset", "offsets", multiple=True, callback=parse_offsets, metavar="N",
              help="Container(s) to check (default: every OEM-signed container).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(in_path, srk_table, offsets, as_json):
    """Check the signature (and image hashes) of AHAB containers: the given ones, or every container
    found (OEM-signed ones must verify, unsigned ones are refused, NXP-signed ones are listed)."""
    image = _read_regular(in_path, "--in")
    table = _read_regular(srk_table, "--srk-table") if srk_table else None
    reports = ahab.verify_image(image, table, offsets)
    result = {"input": str(in_path), "containers": [_container_json(r) for r in reports]}
    emit(result, as_json, f"OK {in_path}: " + ", ".join(
        f"0x{r['offset']:x} (NXP-signed, not checked)" if r.get("nxp") else
        f"0x{r['offset']:x} ({'SGK certified by ' if r.get('sgk') else ''}SRK {r['srk_index'] + 1})"
        for r in reports))


def _container_json(report: dict) -> dict:
    """A container report for --json: its offset in hex, its SRK numbered 1-4 as --srk-index is."""
    out = {**report, "offset": f"0x{report['offset']:x}"}
    if "srk_index" in out:
        out["srk_index"] += 1
    return out


def _read_regular(path: Path, what: str) -> bytes:
    """An input's bytes; a FIFO, device or directory is refused at once (one line) instead of
    blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{what} {path} is not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from None
    finally:
        os.close(fd)
