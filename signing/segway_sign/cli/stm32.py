"""``segway-sign stm32``: sign and verify STM32MP FSBL headers, print PKH/PKHTH fuse values."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..atomic import check_writable, write_file
from ..errors import UsageError
from ..formats.stm32 import header as stm32
from ..formats.stm32.fuses import pkh_fuse_words
from .common import EXIT_NO_ANCHOR, IN_FILE, emit, load_public_key, output_options, read_input, token_options

HEADER_VERSIONS = {"1": stm32.HEADER_V1, "2": stm32.HEADER_V20, "2.0": stm32.HEADER_V20, "2.2": stm32.HEADER_V22}


def parse_int(ctx, param, value):
    """Accept decimal or 0x-prefixed numbers for addresses and versions."""
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number") from None




def read_pkh(pkh_hex: str | None, pkh_file: Path | None) -> bytes | None:
    if pkh_hex and pkh_file:
        raise UsageError("give --pkh or --pkh-file, not both")
    if pkh_file:
        data = read_input(pkh_file, "PKH file")
        if len(data) == 32:
            return data
        pkh_hex = data.decode("ascii", "replace").strip()
    if pkh_hex is None:
        return None
    try:
        value = bytes.fromhex(pkh_hex.removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != 32:
        raise UsageError("a PKH is 32 bytes: 64 hex digits or a 32-byte binary file")
    return value


def fuse_text(fuses: dict) -> str:
    words = " ".join(fuses["otp_words"])
    first = fuses["otp_first_word"]
    return (
        f"{fuses['kind']} {fuses['hash']}\n"
        f"OTP words {first}..{first + 7}: {words}"
    )


@click.group("stm32")
def group() -> None:
    """STM32MP FSBL (TF-A BL2) image headers: v1 (STM32MP15), v2.0/v2.2 (STM32MP13/MP2)."""


@group.command("sign")
@click.option("--key", "key_uri", required=True, metavar="URI", help="Signing key (ECDSA P-256 or brainpoolP256t1) as a pkcs11: URI.")
@click.option("--in", "in_path", required=True, type=IN_FILE, help="Unsigned .stm32 image, or a raw binary with --entry.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--image-version", callback=parse_int, metavar="N", help="Anti-rollback version (OTP monotonic counter).")
@click.option("--keys", "table", multiple=True, metavar="URI|FILE",
              help="Header v2: the public-key table in order (repeat; 1 to 8 keys, must include --key).")
@click.option("--entry", callback=parse_int, metavar="ADDR", help="Raw binary input: entry point (adds a header).")
@click.option("--load", callback=parse_int, metavar="ADDR", help="Raw binary input: load address (default 0).")
@click.option("--binary-type", callback=parse_int, metavar="T", help="Raw binary input: binary type (default 0x10, TF-A).")
@click.option("--header-version", type=click.Choice(["1", "2.0", "2.2"]), help="Raw binary input: header version (default 1).")
@token_options
@output_options
def sign_cmd(key_uri, in_path, out_path, image_version, table, entry, load, binary_type, header_version,
             token, force, as_json):
    """Sign an STM32 image with a key in the token."""
    check_writable(out_path, force)
    data = read_input(in_path)
    if entry is None:
        if load is not None or binary_type is not None or header_version is not None:
            raise UsageError("--load, --binary-type and --header-version describe a raw binary: also give --entry")
    else:
        data = stm32.create(
            data,
            header_version=HEADER_VERSIONS[header_version or "1"],
            entry_point=entry,
            load_address=load or 0,
            binary_type=0x10 if binary_type is None else binary_type,
        )
    key = token.open_key(key_uri, raw_ok=True)
    table_keys = [load_public_key(spec, token, raw_ok=True) for spec in table] or None
    signed = stm32.sign(data, key, image_version=image_version, table_keys=table_keys)
    result = stm32.verify(signed)
    write_file(out_path, signed, force=force)
    fuses = pkh_fuse_words(
        table_keys or [result.public_key], 1 if result.header_version == "1.0" else 2
    )
    summary = {
        **fuses,
        "output": str(out_path),
        "header_version": result.header_version,
        "image_version": result.image_version,
        "image_length": result.image_length,
        "pk_index": result.pk_index,
    }
    if result.header_version != "1.0" and not table_keys:
        # A v2 header authenticates a table of up to 8 keys; without --keys it holds --key alone.
        summary["key_table"] = "one key: --key (no --keys given)"
        click.echo(f"segway-sign: note: header v{result.header_version} without --keys: building a one-key "
                   "public-key table of --key (its PKHTH is what gets fused; give --keys for a table of "
                   "several keys)", err=True)
    emit(summary, as_json, f"signed {out_path} (STM32 header v{result.header_version})\n{fuse_text(fuses)}")


@group.command("verify")
@click.option("--in", "in_path", required=True, type=IN_FILE)
@click.option("--pkh", "pkh_hex", metavar="HEX", help="Expected PKH (v1) or PKHTH (v2), 64 hex digits.")
@click.option("--pkh-file", type=IN_FILE, help="Expected PKH/PKHTH as a 32-byte binary or a hex text file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(in_path, pkh_hex, pkh_file, as_json):
    """Verify a signed STM32 image (checksum, key table, signature, and the PKH/PKHTH against --pkh).

    Exit 0: verified against the expected PKH; 1: refused; 2: usage; 3: the signature verifies but no
    PKH was given, so nothing ties the key to the device ("OK (signature only: ...)")."""
    expected = read_pkh(pkh_hex, pkh_file)
    result = stm32.verify(read_input(in_path), expected_pkh=expected)
    kind = "PKH" if result.header_version == "1.0" else "PKHTH"
    summary = {
        "input": str(in_path),
        "header_version": result.header_version,
        "kind": kind,
        "hash": result.pkh.hex(),
        "otp_words": [f"0x{w:08x}" for w in stm32.otp_words(result.pkh)],
        "pk_index": result.pk_index,
        "image_version": result.image_version,
        "image_length": result.image_length,
        "entry_point": f"0x{result.entry_point:08x}",
        "binary_type": f"0x{result.binary_type:02x}",
        "pkh_checked": expected is not None,
    }
    if expected is None:
        # The key table and signature agree with each other, but nothing says they are the fused key.
        emit(summary, as_json, f"OK (signature only: no trust anchor given) {in_path}: STM32 header "
             f"v{result.header_version}, {kind} {result.pkh.hex()} (give --pkh or --pkh-file, the fused value)")
        sys.exit(EXIT_NO_ANCHOR)
    emit(summary, as_json, f"OK {in_path}: STM32 header v{result.header_version}, {kind} {result.pkh.hex()} "
         "(matches the expected value)")


@group.command("pkh")
@click.option("--key", "key_uri", required=True, metavar="URI|FILE", help="The signing key (pkcs11: URI or public key file).")
@click.option("--header-version", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="1: STM32MP15 PKH; 2: STM32MP13/MP2 PKHTH.")
@click.option("--keys", "table", multiple=True, metavar="URI|FILE",
              help="Header v2: the full public-key table in order (repeat; must include --key).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the 32-byte hash (the file U-Boot's stm32key fuses).")
@token_options
@output_options
def pkh_cmd(key_uri, header_version, table, out_path, token, force, as_json):
    """Print the PKH/PKHTH and the OTP words to fuse."""
    version = int(header_version)
    key = load_public_key(key_uri, token, raw_ok=True)
    if version == 1:
        if table:
            raise UsageError("--keys is for header v2 (STM32MP13/MP2); v1 fuses one key")
        keys = [key]
    else:
        keys = [load_public_key(spec, token, raw_ok=True) for spec in table] or [key]
        if stm32.pk_table_entry(key) not in [stm32.pk_table_entry(k) for k in keys]:
            raise UsageError("--key is not one of the --keys table")
    fuses = pkh_fuse_words(keys, version)
    if out_path is not None:
        write_file(out_path, bytes.fromhex(fuses["hash"]), force=force)
        fuses["output"] = str(out_path)
    emit(fuses, as_json, fuse_text(fuses))
