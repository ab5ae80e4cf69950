"""``segway-sign verity``: dm-verity hash tree, root hash and root-hash signature."""

from __future__ import annotations

import contextlib
import sys
import uuid as uuidlib
from pathlib import Path

import click

from ..errors import SegwayError, UsageError
from ..formats.verity import sign as verity_sign
from ..formats.verity import tree as verity_tree
from ..release.certs import load_certificate as load_cert
from ..release.certs import load_certs_dir
from .common import check_input, emit, output_options, token_options


@click.group()
def group() -> None:
    """dm-verity: hash a rootfs image and sign its root hash (CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG)."""


@contextlib.contextmanager
def _progress(label: str, total: int, enabled: bool):
    """Progress while hashing, on stderr: a bar on a terminal, a line per 10 % in a CI log."""
    if not enabled:
        yield None
        return
    err = click.get_text_stream("stderr")
    if err.isatty():
        with click.progressbar(length=total, label=label, file=err, show_percent=True, show_eta=True) as bar:
            yield bar.update
        return
    state = {"done": 0, "shown": -10}

    def update(n: int) -> None:
        state["done"] += n
        pct = 100 * state["done"] // max(total, 1)
        if pct >= state["shown"] + 10 or (pct == 100 and state["shown"] != 100):
            state["shown"] = pct
            click.echo(f"{label}: {pct}%", err=True)
    yield update


def _block_size(ctx, param, value: int) -> int:
    if value & (value - 1) or not 512 <= value <= 1 << 20:
        raise click.BadParameter("must be a power of two from 512 to 1048576")
    return value


@group.command("sign")
@click.option("--key", "key_uri", required=True, metavar="URI", help="PKCS#11 URI of the signing key.")
@click.option("--cert", "cert_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Certificate (PEM or DER) of the signing key; the kernel keyring must trust it.")
@click.option("--in", "image", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Rootfs image (its size must be a multiple of the data block size).")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New directory for the tree, root hash, signature and verity.env.")
@click.option("--data-block", default=4096, show_default=True, callback=_block_size, help="Data block size.")
@click.option("--hash-block", default=4096, show_default=True, callback=_block_size, help="Hash block size.")
@click.option("--hash", "hash_algorithm", default="sha256", show_default=True,
              type=click.Choice(verity_tree.HASH_ALGORITHMS))
@click.option("--salt", default="random", show_default=True, metavar="HEX|random|-",
              help="Salt in hex, 'random' (as veritysetup) or '-' for none.")
@click.option("--appended", is_flag=True,
              help="Write <name>.verity.img = image + hash area (veritysetup --hash-offset) instead of a "
                   "separate <name>.hashtree.")
@click.option("--no-superblock", is_flag=True, help="Omit the superblock (veritysetup --no-superblock).")
@click.option("--uuid", "uuid_text", metavar="UUID",
              help="Superblock UUID (default: derived from --salt HEX, random with a random salt).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@token_options
@output_options
def sign_cmd(key_uri, cert_path, image, out_dir, data_block, hash_block, hash_algorithm, salt, appended,
             no_superblock, uuid_text, progress, token, force, as_json):
    """Hash IMAGE, sign the root hash, and write everything an initramfs needs."""
    digest_size = 64 if hash_algorithm == "sha512" else 32
    salt_bytes = verity_tree.parse_salt(salt, digest_size)
    try:
        # A given salt makes the whole output reproducible, so the UUID follows from it too.
        uid = uuidlib.UUID(uuid_text) if uuid_text else (
            uuidlib.uuid4() if salt == "random" else verity_tree.uuid_from_salt(salt_bytes))
    except ValueError:
        raise UsageError(f"--uuid {uuid_text!r} is not a UUID") from None
    params = verity_tree.VerityParams(
        salt=salt_bytes, data_block_size=data_block, hash_block_size=hash_block,
        hash_algorithm=hash_algorithm, superblock=not no_superblock, uuid=None if no_superblock else uid,
    )
    cert = load_cert(cert_path)
    check_input(image, "--in")  # a FIFO or device is refused at once instead of hanging the hasher
    verity_sign.output_names(image, appended)
    verity_tree.check_size(image.stat().st_size, params)
    key = token.open_key(key_uri)
    show = sys.stderr.isatty() if progress is None else progress
    with _progress(f"hashing {image.name}", image.stat().st_size, show and not as_json) as update:
        res = verity_sign.sign_image(image, out_dir, key, cert, params, appended=appended, force=force,
                                     progress=update)
    result = {"out_dir": str(out_dir), "root_hash": res.tree.root_hex, "salt": params.salt.hex(),
              "layout": res.layout_kind, "data_blocks": res.tree.layout.data_blocks,
              "hash_start_block": res.tree.layout.tree_start_block, "files": res.files}
    emit(result, as_json, f"{out_dir}: root hash {res.tree.root_hex} ({res.layout_kind}, "
                          f"{res.tree.layout.data_blocks} blocks), signed with {key_uri.split('?')[0]}")


@group.command("verify")
@click.option("--cert", "cert_paths", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trusted certificate (repeatable).")
@click.option("--certs", "certs_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory of trusted certificates.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Rootfs image for the separate layout (default: the one named in verity.env, in or "
                   "beside DIR).")
@click.option("--progress/--no-progress", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def verify_cmd(cert_paths, certs_dir, data_path, progress, as_json, directory):
    """Check DIRECTORY from `verity sign`: every byte of verity.env, the signature, the whole tree."""
    certs = [load_cert(p) for p in cert_paths] + (load_certs_dir(certs_dir) if certs_dir else [])
    if not certs:
        raise UsageError("give the trusted certificate(s) with --cert or --certs")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        total = int(verity_sign.load_env(directory)[1]["VERITY_DATA_SIZE"])
    except SegwayError:
        total = 0  # verify_dir reads the env again and says what is wrong with it
    with _progress("verifying", total, show and not as_json and total > 0) as update:
        res = verity_sign.verify_dir(directory, certs, data_path=data_path, progress=update)
    result = {"directory": str(directory), "root_hash": res.tree.root_hex,
              "signer": res.signer.subject.rfc4514_string(), "ok": True}
    emit(result, as_json, f"{directory}: OK (root hash {res.tree.root_hex}, signed by "
                          f"{res.signer.subject.rfc4514_string()})")
