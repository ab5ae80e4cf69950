"""``segway-sign ta``: sign and verify OP-TEE Trusted Applications with the TA key in the token."""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from pathlib import Path

import click

from ..atomic import check_writable, write_file
from ..errors import UsageError
from ..formats.optee import ta
from .common import IN_FILE, OUT_FILE, emit, load_public_key, output_options, read_input, token_options


def parse_uuid(ctx, param, value):
    if value is None:
        return None
    try:
        return uuidlib.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID") from None


def parse_version(ctx, param, value):
    if value is None:
        return None
    try:
        number = int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise click.BadParameter(f"{value} is not a 32-bit unsigned number")
    return number


def _summary(result: ta.Verified, path: Path, data: bytes) -> dict:
    info = result.ta
    return {
        "uuid": str(info.uuid) if info.uuid else None,
        "ta_version": info.ta_version,
        "img_type": info.img_type_name,
        "algo": info.algo_name,
        "key_bits": result.key_bits,
        "payload_size": len(info.payload),
        "hash": info.digest.hex(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "file": str(path),
    }


def _text(summary: dict) -> str:
    who = f"UUID {summary['uuid']}, ta_version {summary['ta_version']}" if summary["uuid"] \
        else "legacy TA (SHDR_TA: UUID and version not signed)"
    return f"{who}, {summary['algo']}, RSA {summary['key_bits']}, {summary['payload_size']} payload bytes"


@click.group("ta")
def group() -> None:
    """OP-TEE Trusted Applications: the signed header OP-TEE checks against TA_PUBLIC_KEY."""


@group.command("sign")
@click.option("--key", "key_uri", required=True, metavar="URI", help="The TA key (RSA, at least 2048 bits) as a pkcs11: URI.")
@click.option("--in", "in_path", required=True, type=IN_FILE,
              help="The stripped TA ELF (<uuid>.stripped.elf), or a signed TA to sign again.")
@click.option("--out", "out_path", required=True, type=OUT_FILE, help="The signed TA (<uuid>.ta).")
@click.option("--uuid", "ta_uuid", callback=parse_uuid, metavar="UUID",
              help="The TA's UUID (default: the ELF's .ta_head, or the signed TA's).")
@click.option("--ta-version", callback=parse_version, metavar="N",
              help="TA version for OP-TEE's rollback check (default 0, or the signed TA's).")
@click.option("--algo", type=click.Choice(sorted(ta.ALGOS)), default="pkcs1", show_default=True,
              help="pkcs1: TEE_ALG_RSASSA_PKCS1_V1_5_SHA256 (deterministic); "
                   "pss: TEE_ALG_RSASSA_PKCS1_PSS_MGF1_SHA256 (sign_encrypt.py's default).")
@token_options
@output_options
def sign_cmd(key_uri, in_path, out_path, ta_uuid, ta_version, algo, token, force, as_json):
    """Sign a TA: the hash is computed here, the token signs only the hash."""
    check_writable(out_path, force)
    payload, in_uuid, in_version = ta.unsigned_input(read_input(in_path))
    elf_uuid = ta.ta_head_uuid(payload)
    for source, found in (("the signed input", in_uuid), ("the ELF's .ta_head", elf_uuid)):
        if ta_uuid is not None and found is not None and found != ta_uuid:
            raise UsageError(f"--uuid {ta_uuid} differs from {source} ({found})")
    ta_uuid = ta_uuid or in_uuid or elf_uuid
    if ta_uuid is None:
        raise UsageError("give --uuid: the input has no .ta_head section to take it from")
    if ta_version is None:
        ta_version = in_version or 0
    key = token.open_key(key_uri)
    signed = ta.sign(payload, key, ta_uuid, ta_version, algo)
    result = ta.verify(signed, key.public_key(), expected_uuid=ta_uuid)
    write_file(out_path, signed, force=force)
    summary = _summary(result, out_path, signed)
    emit(summary, as_json, f"signed {out_path}: {_text(summary)}")


@group.command("verify")
@click.argument("ta_arg", required=False, metavar="TA", type=IN_FILE)
@click.option("--in", "in_path", type=IN_FILE, help="The signed TA (or give it as the argument).")
@click.option("--key", "key_uri", metavar="URI", help="The TA key in the token (pkcs11: URI).")
@click.option("--pubkey", "pubkey", metavar="FILE", help="The TA public key (PEM/DER), e.g. OP-TEE's TA_PUBLIC_KEY.")
@click.option("--cert", "cert", metavar="FILE", help="The TA key's certificate (PEM/DER).")
@click.option("--uuid", "ta_uuid", callback=parse_uuid, metavar="UUID",
              help="The UUID the TA must be signed as (OP-TEE loads <uuid>.ta as that UUID).")
@token_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(ta_arg, in_path, key_uri, pubkey, cert, ta_uuid, token, as_json):
    """Verify a signed TA as OP-TEE's loader does: sizes, signature, hash of header and payload."""
    if (ta_arg is None) == (in_path is None):
        raise UsageError("give the signed TA once: as the argument or with --in")
    path = ta_arg or in_path
    anchors = [a for a in (key_uri, pubkey, cert) if a]
    if len(anchors) != 1:
        raise UsageError("give the TA key once: --key URI, --pubkey FILE or --cert FILE")
    if key_uri and not key_uri.startswith("pkcs11:"):
        raise UsageError("--key takes a pkcs11: URI; give a key file with --pubkey or --cert")
    if (pubkey or cert or "").startswith("pkcs11:"):
        raise UsageError("--pubkey and --cert take a file; give a token key with --key")
    public_key = load_public_key(anchors[0], token if key_uri else None)
    data = read_input(path)
    result = ta.verify(data, public_key, expected_uuid=ta_uuid)
    summary = _summary(result, path, data)
    summary["uuid_checked"] = ta_uuid is not None
    emit(summary, as_json, f"OK {path}: {_text(summary)}")
