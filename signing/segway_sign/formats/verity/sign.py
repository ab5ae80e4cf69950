"""dm-verity root-hash signatures, ``verity.env``, and the signed output directory.

The root-hash signature is a detached PKCS#7 signature, without signed attributes, over the root hash
as the lowercase hex string the kernel receives in the table — what ``dm-verity`` checks with
``CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG`` (``root_hash_sig_key_desc``, ``drivers/md/dm-verity-verify-sig.c``).

:func:`sign_image` hashes an image (the tree is :mod:`.tree`'s), signs its root hash and writes the
tree, root hash, signature and ``verity.env`` into a directory; :func:`verify_dir` checks such a
directory byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

from cryptography import x509

from ... import cms
from ...atomic import FileRange, output_dir, start_writeback, write_at
from ...errors import InputError, SegwayError, UsageError, VerificationError
from .tree import (
    CHUNK_BYTES,
    HASH_ALGORITHMS,
    HASH_TYPE,
    SUPERBLOCK_SIZE,
    Progress,
    VerityParams,
    VerityTree,
    check_size,
    compute_layout,
    parse_superblock,
    write_tree,
)


# --- root-hash signature ------------------------------------------------------------------------

# What a parser of untrusted bytes (asn1crypto, int(), bytes.fromhex) raises on malformed input.
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def _one_line(text: object) -> str:
    """Parser messages (asn1crypto's among them) may span lines; an error message is one line."""
    return " ".join(str(text).split())


def sign_root_hash(root_hex: str, key, cert: x509.Certificate) -> bytes:
    """Detached PKCS#7 (DER, no signed attributes, no certificates) over the hex root hash.

    This is ``openssl smime -sign -binary -noattr -nocerts`` as the kernel's
    ``verify_pkcs7_signature`` expects; the signature is checked before it is returned.
    """
    der = cms.sign_detached(root_hex.encode("ascii"), key, cert, attributes=False, include_certs=False)
    cms.verify_exact(der, root_hex.encode("ascii"), [cert], include_cert=False)
    return der


def verify_root_hash_signature(sig_der: bytes, root_hex: str, certs: Iterable[x509.Certificate]) -> x509.Certificate:
    """Check the PKCS#7 over ``root_hex`` against ``certs``; returns the certificate that signed it.

    The kernel reads every byte of it, so it must be exactly the form :func:`sign_root_hash` writes
    (``cms.verify_exact``: DER, one signer, no attributes, certificates or content)."""
    try:
        return cms.verify_exact(sig_der, root_hex.encode("ascii"), list(certs), include_cert=False)
    except InputError as e:
        raise InputError(f"the root-hash signature is not DER PKCS#7: {_one_line(e)}") from None
    except SegwayError as e:
        raise type(e)(f"the root-hash signature: {_one_line(e)}") from None
    except _PARSE_ERRORS as e:
        raise InputError(f"the root-hash signature cannot be read ({_one_line(e)})") from None


# --- verity.env ---------------------------------------------------------------------------------
#
# KEY=VALUE lines, one per key, in a fixed order, each value from a small character set: a reader
# parses it (meta-segway's initramfs module does, in sh) and never sources or evaluates it. The dm
# table names its devices by placeholders the reader replaces: @DATA_DEV@ (both devices in the
# appended layout) and @HASH_DEV@. docs/verity.md describes the format.

ENV_NAME = "verity.env"
ENV_FORMAT = "2"
ENV_MAX_BYTES = 4096
DATA_DEV = "@DATA_DEV@"
HASH_DEV = "@HASH_DEV@"
LAYOUTS = ("separate", "appended")
TABLE_FIELDS = ("start sector", "sector count", "target", "hash type", "data device", "hash device",
                "data block size", "hash block size", "data blocks", "hash start block", "algorithm",
                "root hash", "salt")

_NUMBER = (r"0|[1-9][0-9]{0,14}", "a decimal number of at most 15 digits")
_FILE = (r"(?:[A-Za-z0-9_][A-Za-z0-9._+-]{0,254})?", "a file name of letters, digits and ._+-")
# Each key: the pattern its whole value must match, and how an error names that pattern.
ENV_KEYS: dict[str, tuple[str, str]] = {
    "VERITY_ENV_FORMAT": (ENV_FORMAT, ENV_FORMAT),
    "VERITY_ROOT_HASH": (r"[0-9a-f]{64}|[0-9a-f]{128}", "64 or 128 lowercase hex digits"),
    "VERITY_SALT": (r"-|(?:[0-9a-f]{2}){1,256}", "'-' or up to 256 bytes in lowercase hex"),
    "VERITY_HASH_ALGORITHM": ("|".join(HASH_ALGORITHMS), " or ".join(HASH_ALGORITHMS)),
    "VERITY_HASH_TYPE": (str(HASH_TYPE), str(HASH_TYPE)),
    "VERITY_DATA_BLOCK_SIZE": _NUMBER,
    "VERITY_HASH_BLOCK_SIZE": _NUMBER,
    "VERITY_DATA_BLOCKS": _NUMBER,
    "VERITY_DATA_SIZE": _NUMBER,
    "VERITY_DATA_SECTORS": _NUMBER,
    "VERITY_HASH_OFFSET": _NUMBER,
    "VERITY_HASH_START_BLOCK": _NUMBER,
    "VERITY_HASH_SIZE": _NUMBER,
    "VERITY_SUPERBLOCK": ("0|1", "0 or 1"),
    "VERITY_UUID": (r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?",
                    "empty or a lowercase UUID"),
    "VERITY_LAYOUT": ("|".join(LAYOUTS), " or ".join(LAYOUTS)),
    "VERITY_IMAGE": _FILE,
    "VERITY_HASH_FILE": _FILE,
    "VERITY_ROOT_HASH_FILE": _FILE,
    "VERITY_ROOT_HASH_SIG": _FILE,
    "VERITY_TABLE": (r"[0-9A-Za-z@_-]+(?: [0-9A-Za-z@_-]+)*", "words of letters, digits and @_- "
                     "separated by single spaces"),
}
_FILE_NAME = re.compile(_FILE[0], re.ASCII)


@dataclass
class SignedVerity:
    tree: VerityTree
    layout_kind: str  # "separate" or "appended"
    files: dict[str, str] = field(default_factory=dict)  # role -> file name inside out_dir
    # file name -> sha256 (hex) of the file as written, for the outputs sign_image read back whole
    # anyway (the appended image, with ``digest_image``)
    sha256: dict[str, str] = field(default_factory=dict)


def output_names(image: Path, appended: bool, name: str | None = None) -> dict[str, str]:
    """Role → file name of what ``sign_image`` writes; UsageError for a name verity.env cannot carry."""
    image = Path(image)
    name = name or image.name.removesuffix(".img").removesuffix(".ext4")
    files = {"roothash": f"{name}.roothash", "signature": f"{name}.roothash.p7s", "env": ENV_NAME}
    if appended:
        files["image"] = f"{name}.verity.img"
    else:
        files["image"] = image.name
        files["hashtree"] = f"{name}.hashtree"
    for role, fname in files.items():
        if not fname or not _FILE_NAME.fullmatch(fname):
            raise UsageError(f"the {role} file would be named {fname!r}; {ENV_NAME} names files with "
                             "letters, digits and ._+- only (rename the image or give a name)")
    if len(set(files.values())) != len(files):
        raise UsageError(f"the image name {image.name!r} collides with an output file name")
    return files


def env_text(tree: VerityTree, layout_kind: str, files: dict[str, str]) -> str:
    """The ``verity.env`` for ``tree``: everything an initramfs needs to open the device."""
    p, lay = tree.params, tree.layout
    items = {
        "VERITY_ENV_FORMAT": ENV_FORMAT,
        "VERITY_ROOT_HASH": tree.root_hex,
        "VERITY_SALT": p.salt.hex() or "-",
        "VERITY_HASH_ALGORITHM": p.hash_algorithm,
        "VERITY_HASH_TYPE": str(HASH_TYPE),
        "VERITY_DATA_BLOCK_SIZE": str(p.data_block_size),
        "VERITY_HASH_BLOCK_SIZE": str(p.hash_block_size),
        "VERITY_DATA_BLOCKS": str(lay.data_blocks),
        "VERITY_DATA_SIZE": str(tree.data_size),
        "VERITY_DATA_SECTORS": str(tree.data_size // 512),
        "VERITY_HASH_OFFSET": str(lay.hash_area_offset),
        "VERITY_HASH_START_BLOCK": str(lay.tree_start_block),
        "VERITY_HASH_SIZE": str(lay.end - lay.hash_area_offset),
        "VERITY_SUPERBLOCK": "1" if p.superblock else "0",
        "VERITY_UUID": str(p.uuid) if p.uuid else "",
        "VERITY_LAYOUT": layout_kind,
        "VERITY_IMAGE": files.get("image", ""),
        "VERITY_HASH_FILE": files.get("hashtree", ""),
        "VERITY_ROOT_HASH_FILE": files.get("roothash", ""),
        "VERITY_ROOT_HASH_SIG": files.get("signature", ""),
        # The devices are placeholders the reader fills in: the appended layout has one device.
        "VERITY_TABLE": tree.table(DATA_DEV, DATA_DEV if layout_kind == "appended" else HASH_DEV),
    }
    assert list(items) == list(ENV_KEYS)
    return "".join(f"{k}={v}\n" for k, v in items.items())


def parse_env(text: str | bytes, source: str = ENV_NAME) -> dict[str, str]:
    """Read a ``verity.env`` strictly: UTF-8, KEY=VALUE lines, every known key once, nothing else.

    Raises InputError with one line naming the first problem. This checks the syntax only;
    :func:`verify_dir` checks the values against the signed root hash and the tree.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{source} is not UTF-8 text (byte {e.start})") from None
    if not text:
        raise InputError(f"{source} is empty")
    if len(text) > ENV_MAX_BYTES:
        raise InputError(f"{source} is longer than {ENV_MAX_BYTES} characters")
    if not text.startswith(f"VERITY_ENV_FORMAT={ENV_FORMAT}\n"):
        raise InputError(f"{source} does not start with VERITY_ENV_FORMAT={ENV_FORMAT} (the format this "
                         "segway-sign reads and writes; an older one was meant to be sourced: sign again)")
    if not text.endswith("\n"):
        raise InputError(f"{source} does not end with a newline (truncated?)")
    env: dict[str, str] = {}
    for n, line in enumerate(text[:-1].split("\n"), 1):
        key, sep, value = line.partition("=")
        if not sep:
            raise InputError(f"{source} line {n} is not KEY=VALUE")
        if key not in ENV_KEYS:
            raise InputError(f"{source} line {n}: unknown key {key[:40]!r}")
        if key in env:
            raise InputError(f"{source} line {n}: {key} is given twice")
        pattern, what = ENV_KEYS[key]
        if not re.fullmatch(pattern, value, re.ASCII):
            raise InputError(f"{source} line {n}: {key} must be {what}")
        env[key] = value
    missing = [k for k in ENV_KEYS if k not in env]
    if missing:
        raise InputError(f"{source} lacks {', '.join(missing)}")
    return env


def device_table(env: dict[str, str], data_dev: str, hash_dev: str | None = None) -> str:
    """The dm table of a parsed env with the devices filled in (``hash_dev`` for the separate layout)."""
    for dev in (data_dev, hash_dev):
        if dev is not None and not re.fullmatch(r"/[A-Za-z0-9/._:+-]+", dev, re.ASCII):
            raise UsageError(f"device path {dev!r} must be absolute, of letters, digits and /._:+-")
    fields = env["VERITY_TABLE"].split(" ")
    if len(fields) != len(TABLE_FIELDS) or fields[4] != DATA_DEV or fields[5] not in (DATA_DEV, HASH_DEV):
        raise InputError(f"{ENV_NAME}: VERITY_TABLE is not a dm-verity table with device placeholders")
    if fields[5] == HASH_DEV and hash_dev is None:
        raise UsageError("this table (separate layout) needs a hash device")
    fields[4] = data_dev
    fields[5] = data_dev if fields[5] == DATA_DEV else hash_dev
    return " ".join(fields)


def _table_difference(got: str, want: str) -> str:
    g, w = got.split(" "), want.split(" ")
    if g[: len(w)] == w and len(g) > len(w):
        return f"it adds optional arguments '{' '.join(g[len(w):])}' (segway-sign writes none)"
    for name, a, b in zip(TABLE_FIELDS, g, w):
        if a != b:
            return f"its {name} is {a}, not {b}"
    return f"it has {len(g)} fields, not {len(w)}"


# --- files: sign and verify a rootfs image --------------------------------------------------------


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; a FIFO, device or directory is refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _read_regular(path: Path, limit: int) -> bytes:
    with _open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path} is larger than {limit} bytes")
    return data


class _BesideTheTree(threading.Thread):
    """Work on the image copy's data that runs in a thread while the tree is hashed: start its
    writeback (the disk writes it while the CPUs hash, so the flush at the end has little left to
    wait for) and, with ``digest``, take its sha256 (sync_file_range, preadv and hashlib release the
    GIL). ``digest_of`` adds the rest of the file; ``close`` waits for the thread and closes the file,
    whatever happened."""

    _CHUNK = 8 << 20

    def __init__(self, path: Path, size: int, digest: bool):
        super().__init__(daemon=True)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._size, self._error = size, None
        self._hash = hashlib.sha256() if digest else None

    def run(self) -> None:
        try:
            start_writeback(self._fd, 0, self._size)
            if self._hash is not None:
                self._hash_range(0, self._size)
        except BaseException as err:  # re-raised by digest_of
            self._error = err

    def _hash_range(self, offset: int, end: int) -> None:
        buf = bytearray(self._CHUNK)
        while offset < end:
            view = memoryview(buf)[:min(self._CHUNK, end - offset)]
            n = os.preadv(self._fd, [view], offset)
            if not n:
                raise InputError("the image copy shrank while it was being hashed")
            self._hash.update(view[:n])
            offset += n

    def digest_of(self, end: int) -> str | None:
        """The sha256 of the file's first ``end`` bytes (None without ``digest``)."""
        if self.ident is None:  # write_tree failed before the data level
            raise SegwayError("the image copy was not hashed")
        self.join()
        if self._error is not None:
            raise self._error
        if self._hash is None:
            return None
        self._hash_range(self._size, end)
        return self._hash.hexdigest()

    def close(self) -> None:
        if self.ident is not None:
            self.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sign_image(
    image: Path,
    out_dir: Path,
    key,
    cert: x509.Certificate,
    params: VerityParams,
    appended: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    name: str | None = None,
    digest_image: bool = False,
    durable: bool = True,
) -> SignedVerity:
    """Hash ``image``, sign its root hash and write everything into ``out_dir`` atomically.

    Separate layout: ``<name>.hashtree`` beside the untouched image. Appended layout:
    ``<name>.verity.img`` = image + hash area at the next hash-block boundary (``--hash-offset``).
    Plus ``<name>.roothash`` (hex), ``<name>.roothash.p7s`` and ``verity.env``. With ``digest_image``
    (appended layout) the result also carries the sha256 of the written image, taken from the
    written bytes while the tree is hashed (a release manifest records it without reading the
    image once more). ``durable=False`` is for an ``out_dir`` inside an output directory that
    flushes everything before it gets its name (a release): the tree or image is then only sent
    on its way to the disk (start_writeback) while the caller goes on, not waited for here.
    """
    image = Path(image)
    files = output_names(image, appended, name)
    data = _open_regular(image)
    size = os.fstat(data.fileno()).st_size
    digests: dict[str, str] = {}
    beside: _BesideTheTree | None = None
    with data, output_dir(out_dir, force=force, durable=durable) as tmp:
        if appended:
            offset = -(-size // params.hash_block_size) * params.hash_block_size
            target = tmp / files["image"]
        else:
            offset = 0
            target = tmp / files["hashtree"]
        try:
            with open(target, "w+b") as out:
                if appended:
                    check_size(size, params)
                    # The data reaches the output inside the kernel (copy_file_range) and the tree is
                    # hashed from that copy: it covers exactly the bytes written, and the data level
                    # is hashed by two processes (the copy is a regular file), not read and written
                    # by one.
                    write_at(out.fileno(), FileRange(data.fileno(), 0, size), 0)
                    beside = _BesideTheTree(target, size, digest_image)
                    with open(target, "rb") as copy:
                        tree = write_tree(copy, size, out, params, offset, progress, on_data_level=beside.start)
                else:
                    tree = write_tree(data, size, out, params, offset, progress)
                if appended and size < offset:
                    # Pad the tail of the last data block up to the hash area, as a file grown by dd would be.
                    out.seek(size)
                    out.write(b"\0" * (offset - size))
                out.flush()
                if beside is not None:
                    image_sha256 = beside.digest_of(os.fstat(out.fileno()).st_size)
                    if image_sha256:
                        digests[files["image"]] = image_sha256
                if durable:
                    os.fsync(out.fileno())
                else:
                    start_writeback(out.fileno())
        finally:
            if beside is not None:
                beside.close()
        sig = sign_root_hash(tree.root_hex, key, cert)
        kind = "appended" if appended else "separate"
        text = env_text(tree, kind, files)
        parse_env(text)  # what we write must be what we read
        (tmp / files["roothash"]).write_text(tree.root_hex)
        (tmp / files["signature"]).write_bytes(sig)
        (tmp / files["env"]).write_text(text)
        for f in tmp.iterdir():
            f.chmod(0o644)
    return SignedVerity(tree, kind, files, digests)


def verify_tree(
    data_path: Path,
    hash_path: Path,
    hash_area_offset: int,
    params: VerityParams,
    data_blocks: int,
    root_hex: str,
    progress: Progress | None = None,
) -> VerityTree:
    """Recompute the tree of ``data_path`` and compare it block for block with ``hash_path``."""
    import tempfile

    with _open_regular(data_path) as data, _open_regular(hash_path) as stored, \
            tempfile.NamedTemporaryFile(prefix="verity-", suffix=".tree") as scratch:
        need = data_blocks * params.data_block_size
        if os.fstat(data.fileno()).st_size < need:
            raise VerificationError(f"{data_path} is shorter than the {data_blocks} blocks the tree covers")
        tree = write_tree(_Limited(data, need), need, scratch, params, hash_area_offset, progress)
        if tree.root_hex != root_hex.lower():
            raise VerificationError(f"root hash mismatch: expected {root_hex}, the data gives {tree.root_hex}")
        scratch.flush()
        scratch.seek(hash_area_offset)
        stored.seek(hash_area_offset)
        remaining = tree.layout.end - hash_area_offset
        pos = hash_area_offset
        while remaining:
            n = min(CHUNK_BYTES, remaining)
            want, got = scratch.read(n), stored.read(n)
            if want != got:
                for i in range(0, n, params.hash_block_size):
                    if want[i : i + params.hash_block_size] != got[i : i + params.hash_block_size]:
                        raise VerificationError(
                            f"hash tree block at offset {pos + i} of {hash_path} does not match the data"
                        )
                raise VerificationError(f"hash area of {hash_path} is truncated")
            remaining -= n
            pos += n
    return tree


class _Limited:
    """A read-only view of the first ``size`` bytes of a file (the data covered by the tree)."""

    def __init__(self, f: BinaryIO, size: int):
        self._f, self._size = f, size

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buf) -> int:
        left = self._size - self._f.tell()
        if left <= 0:
            return 0
        return self._f.readinto(memoryview(buf)[:left])

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n < 0 else min(n, left))


@dataclass
class VerifiedVerity:
    tree: VerityTree
    signer: x509.Certificate
    env: dict[str, str]
    layout_kind: str = "separate"
    files: dict[str, str] = field(default_factory=dict)


def load_env(out_dir: Path) -> tuple[bytes, dict[str, str]]:
    """The bytes of ``out_dir/verity.env`` and its keys, read strictly (see :func:`parse_env`)."""
    path = Path(out_dir) / ENV_NAME
    raw = _read_regular(path, ENV_MAX_BYTES)
    return raw, parse_env(raw, str(path))


def claimed_tree(env: dict[str, str], source: str = ENV_NAME) -> tuple[VerityTree, str, dict[str, str]]:
    """The tree, layout and file names a parsed env states, before any of it is checked."""
    kind = env["VERITY_LAYOUT"]
    try:
        params = VerityParams(
            salt=b"" if env["VERITY_SALT"] == "-" else bytes.fromhex(env["VERITY_SALT"]),
            data_block_size=int(env["VERITY_DATA_BLOCK_SIZE"]),
            hash_block_size=int(env["VERITY_HASH_BLOCK_SIZE"]),
            hash_algorithm=env["VERITY_HASH_ALGORITHM"],
            superblock=env["VERITY_SUPERBLOCK"] == "1",
            uuid=uuidlib.UUID(env["VERITY_UUID"]) if env["VERITY_UUID"] else None,
        )
    except UsageError as e:
        raise InputError(f"{source}: {e}") from None
    if params.uuid is not None and not params.superblock:
        raise InputError(f"{source}: VERITY_UUID is set but there is no superblock")
    root = bytes.fromhex(env["VERITY_ROOT_HASH"])
    if len(root) != params.digest_size:
        raise InputError(f"{source}: VERITY_ROOT_HASH is {len(root)} bytes, {params.hash_algorithm} gives "
                         f"{params.digest_size}")
    blocks = int(env["VERITY_DATA_BLOCKS"])
    if blocks < 1:
        raise InputError(f"{source}: VERITY_DATA_BLOCKS is 0")
    data_size = blocks * params.data_block_size
    # sign_image puts the appended hash area at the first hash block past the data, nowhere else.
    offset = -(-data_size // params.hash_block_size) * params.hash_block_size if kind == "appended" else 0
    layout = compute_layout(blocks, params, offset)
    files = {"image": env["VERITY_IMAGE"], "roothash": env["VERITY_ROOT_HASH_FILE"],
             "signature": env["VERITY_ROOT_HASH_SIG"], "env": ENV_NAME}
    if kind == "separate":
        files["hashtree"] = env["VERITY_HASH_FILE"]
    for role, key in (("image", "VERITY_IMAGE"), ("roothash", "VERITY_ROOT_HASH_FILE"),
                      ("signature", "VERITY_ROOT_HASH_SIG"), ("hashtree", "VERITY_HASH_FILE")):
        if role in files and not files[role]:
            raise InputError(f"{source}: {key} is empty")
    if len(set(files.values())) != len(files):
        raise InputError(f"{source}: two roles name the same file")
    return VerityTree(params, layout, root, data_size), kind, files


def check_env(raw: bytes, env: dict[str, str], source: str = ENV_NAME) -> tuple[VerityTree, str, dict[str, str]]:
    """Everything in the env must be what segway-sign writes for the tree it states: every derived
    value (sizes, offsets, the dm table) recomputed, no dm table option, the same bytes."""
    tree, kind, files = claimed_tree(env, source)
    want = env_text(tree, kind, files)
    if want.encode() != raw:
        want_env = parse_env(want, source)
        for key in ENV_KEYS:
            if env[key] == want_env[key]:
                continue
            if key == "VERITY_TABLE":
                raise VerificationError(f"{source}: VERITY_TABLE is not the table the root hash and tree "
                                        f"parameters give: {_table_difference(env[key], want_env[key])}")
            raise VerificationError(f"{source}: {key} is {env[key]}, the tree parameters give {want_env[key]}")
        raise VerificationError(f"{source}: the keys are not in the order segway-sign writes them")
    return tree, kind, files


def verify_dir(out_dir: Path, certs: Iterable[x509.Certificate], data_path: Path | None = None,
               progress: Progress | None = None) -> VerifiedVerity:
    """Check a ``sign_image`` output: every byte of the env, the signature over the root hash, and the
    tree against the data.

    ``data_path`` is the rootfs for the separate layout (default: the image named in the env, looked
    up in ``out_dir`` and then beside it).
    """
    out_dir = Path(out_dir)
    raw, env = load_env(out_dir)
    source = str(out_dir / ENV_NAME)
    claimed, kind, files = check_env(raw, env, source)
    root_hex = claimed.root_hex
    rh_path = out_dir / files["roothash"]
    if _read_regular(rh_path, 1024) != root_hex.encode():
        raise VerificationError(f"{rh_path.name} and {ENV_NAME} disagree on the root hash")
    sig = _read_regular(out_dir / files["signature"], 64 * 1024)
    signer = verify_root_hash_signature(sig, root_hex, certs)
    if kind == "appended":
        data_path = hash_path = out_dir / files["image"]
    else:
        hash_path = out_dir / files["hashtree"]
        if data_path is None:
            candidates = [out_dir / files["image"], out_dir.parent / files["image"]]
            data_path = next((c for c in candidates if c.exists()), candidates[0])
    params, offset = claimed.params, claimed.layout.hash_area_offset
    if params.superblock:
        with _open_regular(hash_path) as f:
            f.seek(offset)
            sb_params, sb_blocks = parse_superblock(f.read(SUPERBLOCK_SIZE))
        if (sb_params, sb_blocks) != (params, claimed.layout.data_blocks):
            raise VerificationError(f"the superblock in {hash_path.name} disagrees with {ENV_NAME}")
    tree = verify_tree(data_path, hash_path, offset, params, claimed.layout.data_blocks, root_hex, progress)
    return VerifiedVerity(tree, signer, env, kind, files)
