"""``segway-sign fit``: sign FIT images, add public keys to U-Boot DTBs, verify."""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from pathlib import Path

import click

from ..atomic import FileRange, check_writable, output_file, write_at, write_file
from ..formats.fit.keys import add_pubkey as add_pubkey_node
from ..formats.fit.keys import algo_for_key
from ..formats.fit.sign import payload_spans, sign_fit
from ..formats.fit.verify import verify_fit
from ..errors import InputError
from .common import emit, load_public_key, open_input, output_options, read_input, token_options
from .progress import DelayedProgress

_ALGOS = [f"{h},{c}" for h in ("sha1", "sha256", "sha384", "sha512")
          for c in ("rsa2048", "rsa3072", "rsa4096", "ecdsa256", "ecdsa384")]


@click.group()
def group() -> None:
    """U-Boot FIT images (verified boot)."""


@group.command("sign")
@click.option("--key", "key_uri", required=True, metavar="URI", help="PKCS#11 URI of the signing key.")
@click.option("--in", "in_path", required=True, type=click.Path(path_type=Path), help="FIT to sign.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Signed FIT to write.")
@click.option("--config", "configs", multiple=True, metavar="NAME",
              help="Configuration to sign (repeatable; default: those with signature nodes, or all).")
@click.option("--key-name-hint", metavar="H", help="Key name for new signature nodes (U-Boot key-<H>).")
@click.option("--algo", type=click.Choice(_ALGOS), help="Override/define the signature algo.")
@click.option("--padding", "padding_name", type=click.Choice(["pkcs-1.5", "pss"]), help="RSA padding for new nodes.")
@click.option("--image-signatures", is_flag=True, help="Also sign each image (adds signature nodes where missing).")
@click.option("--comment", help="Comment stored in the signature nodes.")
@token_options
@output_options
def sign(key_uri, in_path, out_path, configs, key_name_hint, algo, padding_name, image_signatures, comment,
         token, force, as_json):
    """Sign a FIT's configurations (and optionally images) with a key in the token."""
    check_writable(out_path, force)
    with _mapped_input(in_path) as (blob, source_fd, unchanged):
        key = token.open_key(key_uri)
        with output_file(out_path, force) as out_fd:
            ahead = _CopyAhead(blob, source_fd, out_fd)
            try:
                result = sign_fit(blob, key, configs=configs, key_name_hint=key_name_hint, algo=algo,
                                  padding_name=padding_name, image_signatures=image_signatures, comment=comment,
                                  progress=DelayedProgress("hashing"))
            except BaseException:
                ahead.finish(cancel=True)
                raise
            copied = ahead.finish()
            # Every byte of the output is written at its place, except image data the copy ahead
            # already put exactly there; anything beyond the end is cut off.
            at = 0
            for piece in result.chunks(source_fd):
                if isinstance(piece, FileRange) and (piece.offset, piece.length, at) in copied:
                    at += piece.length
                else:
                    at = write_at(out_fd, piece, at)
            os.ftruncate(out_fd, at)
            unchanged()  # before the output is flushed and named
    summary = {
        "output": str(out_path), "key": str(key.uri), "passes": result.passes,
        "bytes_sent_to_token": key.stats.bytes_sent if hasattr(key, "stats") else None,
        "signatures": [{"node": s.path, "algo": s.algo, "key_name_hint": s.key_name_hint,
                        "padding": s.padding, "digest": s.digest.hex(), "hashed_nodes": s.hashed_nodes}
                       for s in result.signatures],
    }
    emit(summary, as_json, "\n".join(
        [f"signed {len(result.signatures)} signature node(s) of {in_path} -> {out_path}"] +
        [f"  {s.path}: {s.algo}:{s.key_name_hint}" for s in result.signatures]))


class _CopyAhead:
    """Copy a FIT's large embedded image data into the output while it is being hashed, at the
    offsets they have in the input: where signing leaves what precedes them unchanged (the usual
    case for the first image), that is where they land in the signed FIT, and the copy costs no time
    of its own. A guess only: finish() says which (input offset, length, output offset) were copied,
    and the writer writes everything else (and anything mispredicted) at its true place."""

    _SLICE = 64 << 20

    def __init__(self, blob, source_fd: int | None, out_fd: int):
        self.copied: set[tuple[int, int, int]] = set()
        self.stop = threading.Event()
        spans = payload_spans(blob) if source_fd is not None else []
        self.thread = None
        if spans:
            self.thread = threading.Thread(target=self._run, args=(spans, source_fd, out_fd), daemon=True)
            self.thread.start()

    def _run(self, spans, source_fd: int, out_fd: int) -> None:
        try:
            for start, length in spans:
                for off in range(start, start + length, self._SLICE):
                    if self.stop.is_set():
                        return
                    n = min(self._SLICE, start + length - off)
                    write_at(out_fd, FileRange(source_fd, off, n), off)
                self.copied.add((start, length, start))
        except Exception:  # a guess: whatever failed here is written (or fails) again later
            return

    def finish(self, cancel: bool = False) -> set[tuple[int, int, int]]:
        if self.thread is not None:
            if cancel:
                self.stop.set()
            self.thread.join()
        return self.copied


@contextlib.contextmanager
def _mapped_input(path: Path):
    """The FIT mapped read-only (its data is hashed and written from the page cache, never held in
    memory), and a check that it did not change while it was mapped: a FIT rewritten under us
    would otherwise be written out with data that no longer matches the hashes just signed."""
    with open_input(path) as f:
        try:
            before = os.fstat(f.fileno())
            blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if before.st_size else b""
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read input {path}: {getattr(err, 'strerror', None) or err}") from None

        def unchanged() -> None:
            now = os.fstat(f.fileno())
            if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (before.st_size, before.st_mtime_ns,
                                                                   before.st_ctime_ns):
                raise InputError(f"input {path} changed while it was being signed; nothing written")

        try:
            yield blob, (f.fileno() if isinstance(blob, mmap.mmap) else None), unchanged
        finally:
            if isinstance(blob, mmap.mmap):
                with contextlib.suppress(BufferError):
                    blob.close()


@group.command("add-pubkey")
@click.option("--key", "key_spec", required=True, metavar="URI|FILE",
              help="PKCS#11 URI of the key (its public half is read), or a PEM/DER public key or certificate.")
@click.option("--dtb", "dtb_path", required=True, type=click.Path(path_type=Path), help="U-Boot control DTB.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="DTB to write.")
@click.option("--key-name-hint", required=True, metavar="H", help="Key name (node key-<H> for RSA).")
@click.option("--required", type=click.Choice(["conf", "image"]), default="conf", show_default=True,
              help="What U-Boot must find signed with this key.")
@click.option("--algo", type=click.Choice(_ALGOS), help="Algo string (default from the key, sha256).")
@token_options
@output_options
def add_pubkey(key_spec, dtb_path, out_path, key_name_hint, required, algo, token, force, as_json):
    """Write the key node mkimage -K writes into a U-Boot control DTB.

    Only the public key is needed, so a certificate works without the token (builds that defer
    signing still ship a U-Boot that enforces the release key)."""
    check_writable(out_path, force)
    dtb = read_input(dtb_path, "DTB")
    public = load_public_key(key_spec, token)
    algo = algo or algo_for_key(public)
    out = add_pubkey_node(dtb, public, key_name_hint, algo, required)
    write_file(out_path, out, force)
    emit({"output": str(out_path), "key_name_hint": key_name_hint, "algo": algo, "required": required},
         as_json, f"public key '{key_name_hint}' ({algo}, required={required}) written to {out_path}")


@group.command("verify")
@click.option("--dtb", "dtb_path", required=True, type=click.Path(path_type=Path),
              help="U-Boot control DTB holding the public key(s).")
@click.option("--in", "in_path", required=True, type=click.Path(path_type=Path), help="Signed FIT.")
@click.option("--config", help="Configuration to check (default: the FIT's default).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(dtb_path, in_path, config, as_json):
    """Apply U-Boot's signature checks to a FIT (exit status 1 if it would be refused)."""
    report = verify_fit(read_input(in_path), read_input(dtb_path, "control DTB"), config)
    emit({"config": report.config, "checks": report.checks, "ok": True}, as_json,
         "\n".join([f"{in_path}: configuration {report.config} verifies"] + [f"  {c}" for c in report.checks]))
