"""dm-verity hash trees, root hashes and root-hash signatures.

The tree is byte-identical to what ``veritysetup format`` (cryptsetup 2.6, hash type 1) writes with the
same parameters: level hashes are ``H(salt || block)``, the top level is stored first, each level is
padded to whole hash blocks, and the optional 512-byte superblock sits at the start of the hash area with
the tree starting at the next hash-block boundary (cryptsetup ``lib/verity/verity_hash.c``,
``VERITY_hash_offset_block`` in ``lib/verity/verity.c``).

The image is streamed: data is read in chunks and level hashes are written to (and read back from) the
output file, so memory stays flat for any image size.

The root-hash signature is a detached PKCS#7 signature, without signed attributes, over the root hash
as the lowercase hex string the kernel receives in the table — what ``dm-verity`` checks with
``CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG`` (``root_hash_sig_key_desc``, ``drivers/md/dm-verity-verify-sig.c``).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from cryptography import x509

from ..atomic import output_dir
from ..errors import InputError, SegwayError, UsageError, VerificationError
from .. import cms

SUPERBLOCK_SIZE = 512
SUPERBLOCK_MAGIC = b"verity\0\0"
HASH_TYPE = 1
HASH_ALGORITHMS = ("sha256", "sha512")
# Reading this much at a time keeps syscalls rare without making memory depend on the image size.
CHUNK_BYTES = 4 << 20

Progress = Callable[[int], None]


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class VerityParams:
    """What ``veritysetup format`` takes: block sizes, hash, salt, superblock and its UUID."""

    salt: bytes
    data_block_size: int = 4096
    hash_block_size: int = 4096
    hash_algorithm: str = "sha256"
    superblock: bool = True
    uuid: uuidlib.UUID | None = None

    def __post_init__(self) -> None:
        for name in ("data_block_size", "hash_block_size"):
            size = getattr(self, name)
            if not _power_of_two(size) or not 512 <= size <= 1 << 20:
                raise UsageError(f"{name.replace('_', ' ')} {size} must be a power of two from 512 to 1 MiB")
        if self.hash_algorithm not in HASH_ALGORITHMS:
            raise UsageError(f"hash algorithm {self.hash_algorithm!r} is not one of {', '.join(HASH_ALGORITHMS)}")
        if len(self.salt) > 256:
            raise UsageError(f"salt is {len(self.salt)} bytes; dm-verity allows at most 256")
        if self.superblock and self.uuid is None:
            raise UsageError("a superblock needs a UUID")

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_algorithm).digest_size


@dataclass(frozen=True)
class TreeLayout:
    """Where every level lives in the hash area; offsets in hash blocks from the hash device start."""

    data_blocks: int
    hash_area_offset: int  # bytes: where the superblock (or the tree, without one) starts
    tree_start_block: int  # hash blocks: what the dm table calls hash_start_block
    levels: tuple[tuple[int, int], ...]  # (first block, block count), level 0 (data hashes) first
    hash_block_size: int

    @property
    def hash_blocks(self) -> int:
        return sum(n for _, n in self.levels)

    @property
    def end(self) -> int:
        """Byte offset just past the hash area."""
        return (self.tree_start_block + self.hash_blocks) * self.hash_block_size


def compute_layout(data_blocks: int, params: VerityParams, hash_area_offset: int = 0) -> TreeLayout:
    """Level positions exactly as ``VERITY_create_or_verify_hash`` computes them."""
    if data_blocks < 1:
        raise InputError("the data image holds no complete data block")
    if hash_area_offset % 512:
        raise UsageError(f"hash offset {hash_area_offset} is not a multiple of 512")
    hbs = params.hash_block_size
    if params.superblock:
        tree_start = (hash_area_offset + SUPERBLOCK_SIZE + hbs - 1) // hbs
    else:
        if hash_area_offset % hbs:
            raise UsageError(f"hash offset {hash_area_offset} is not a multiple of the hash block size {hbs}")
        tree_start = hash_area_offset // hbs
    bits = (hbs // params.digest_size).bit_length() - 1  # hashes per block, rounded down to 2^bits
    levels = 0
    while bits * levels < 64 and (data_blocks - 1) >> (bits * levels):
        levels += 1
    position = tree_start
    placed: list[tuple[int, int]] = [(0, 0)] * levels
    for i in range(levels - 1, -1, -1):  # the top level comes first on disk
        shift = (i + 1) * bits
        count = (data_blocks + (1 << shift) - 1) >> shift
        placed[i] = (position, count)
        position += count
    return TreeLayout(data_blocks, hash_area_offset, tree_start, tuple(placed), hbs)


def superblock_bytes(params: VerityParams, data_blocks: int) -> bytes:
    """The 512-byte ``struct verity_sb`` (little-endian, cryptsetup ``lib/verity/verity.c``)."""
    assert params.uuid is not None
    sb = struct.pack(
        "<8sII16s32sIIQH6s256s168s",
        SUPERBLOCK_MAGIC,
        1,
        HASH_TYPE,
        params.uuid.bytes,
        params.hash_algorithm.encode(),
        params.data_block_size,
        params.hash_block_size,
        data_blocks,
        len(params.salt),
        b"",
        params.salt,
        b"",
    )
    assert len(sb) == SUPERBLOCK_SIZE
    return sb


def parse_superblock(raw: bytes) -> tuple[VerityParams, int]:
    """Parameters and data block count from a superblock; InputError if it is not one."""
    if len(raw) < SUPERBLOCK_SIZE or raw[:8] != SUPERBLOCK_MAGIC:
        raise InputError("no dm-verity superblock at the hash offset")
    (_, version, hash_type, uid, alg, dbs, hbs, blocks, salt_size, _, salt, _) = struct.unpack(
        "<8sII16s32sIIQH6s256s168s", raw[:SUPERBLOCK_SIZE]
    )
    if version != 1 or hash_type != HASH_TYPE:
        raise InputError(f"unsupported dm-verity superblock version {version} / hash type {hash_type}")
    if salt_size > 256:
        raise InputError(f"dm-verity superblock salt size {salt_size} is larger than 256")
    try:
        params = VerityParams(
            salt=salt[:salt_size],
            data_block_size=dbs,
            hash_block_size=hbs,
            hash_algorithm=alg.rstrip(b"\0").decode("ascii", "replace"),
            superblock=True,
            uuid=uuidlib.UUID(bytes=uid),
        )
    except UsageError as e:
        raise InputError(f"dm-verity superblock: {e}") from None
    return params, blocks


class _BlockHasher:
    """H(salt || block) for one block size; copies a pre-salted state so the salt is hashed once."""

    def __init__(self, params: VerityParams, block_size: int):
        self._base = hashlib.new(params.hash_algorithm)
        self._base.update(params.salt)
        self.block_size = block_size
        digest = params.digest_size
        self._pad = b"\0" * ((1 << (digest - 1).bit_length()) - digest)  # entries padded to 2^n bytes
        self.entry_size = digest + len(self._pad)

    def digest(self, block) -> bytes:
        h = self._base.copy()
        h.update(block)
        return h.digest()

    def entries(self, buf: memoryview) -> bytes:
        """Concatenated padded digests of every block in ``buf`` (a whole number of blocks)."""
        bs = self.block_size
        pad = self._pad
        base = self._base
        out = []
        for off in range(0, len(buf), bs):
            h = base.copy()
            h.update(buf[off : off + bs])
            out.append(h.digest())
            if pad:
                out.append(pad)
        return b"".join(out)


def _read_exact(f: BinaryIO, buf: bytearray, want: int) -> memoryview:
    view = memoryview(buf)[:want]
    got = 0
    while got < want:
        n = f.readinto(view[got:])
        if not n:
            raise InputError("the data image shrank while it was being read")
        got += n
    return view


def _hash_level(
    src: BinaryIO,
    src_offset: int,
    n_blocks: int,
    hasher: _BlockHasher,
    dst: BinaryIO,
    dst_offset: int,
    dst_blocks: int,
    hash_block_size: int,
    progress: Progress | None = None,
) -> None:
    """Hash ``n_blocks`` blocks of ``src`` into level blocks at ``dst_offset`` (zero-padded)."""
    bs = hasher.block_size
    per_chunk = max(1, CHUNK_BYTES // bs)
    buf = bytearray(per_chunk * bs)
    src.seek(src_offset)
    written = 0
    done = 0
    while done < n_blocks:
        count = min(per_chunk, n_blocks - done)
        view = _read_exact(src, buf, count * bs)
        entries = hasher.entries(view)
        # Reading and writing the same file (upper levels) is fine: we read level i-1, write level i.
        pos = src.tell()
        dst.seek(dst_offset + written)
        dst.write(entries)
        written += len(entries)
        src.seek(pos)
        done += count
        if progress:
            progress(count * bs)
    dst.seek(dst_offset + written)
    dst.write(b"\0" * (dst_blocks * hash_block_size - written))


@dataclass(frozen=True)
class VerityTree:
    """The result of hashing an image: parameters, layout and root hash."""

    params: VerityParams
    layout: TreeLayout
    root_hash: bytes
    data_size: int  # bytes covered by the tree (data_blocks * data_block_size)

    @property
    def root_hex(self) -> str:
        return self.root_hash.hex()

    def table(self, data_dev: str, hash_dev: str) -> str:
        """The device-mapper table line (``Documentation/admin-guide/device-mapper/verity.rst``)."""
        p = self.params
        return (
            f"0 {self.data_size // 512} verity {HASH_TYPE} {data_dev} {hash_dev} {p.data_block_size} "
            f"{p.hash_block_size} {self.layout.data_blocks} {self.layout.tree_start_block} "
            f"{p.hash_algorithm} {self.root_hex} {p.salt.hex() or '-'}"
        )


def check_size(size: int, params: VerityParams) -> None:
    """Refuse an image the tree cannot cover exactly (before a key is opened)."""
    data_blocks_of(size, params)


def data_blocks_of(size: int, params: VerityParams) -> int:
    if size % params.data_block_size:
        raise InputError(
            f"the data image is {size} bytes, not a multiple of the data block size {params.data_block_size}"
        )
    if size == 0:
        raise InputError("the data image is empty")
    return size // params.data_block_size


def write_tree(
    data: BinaryIO,
    data_size: int,
    out: BinaryIO,
    params: VerityParams,
    hash_area_offset: int = 0,
    progress: Progress | None = None,
    copy_data_to_out: bool = False,
) -> VerityTree:
    """Hash ``data`` and write the superblock and tree into ``out`` at ``hash_area_offset``.

    With ``copy_data_to_out`` the data is also copied to the start of ``out`` in the same pass
    (the appended layout), so the image is read once.
    """
    blocks = data_blocks_of(data_size, params)
    layout = compute_layout(blocks, params, hash_area_offset)
    hbs = params.hash_block_size
    data_hasher = _BlockHasher(params, params.data_block_size)
    hash_hasher = _BlockHasher(params, hbs)
    if params.superblock:
        out.seek(hash_area_offset)
        out.write(superblock_bytes(params, blocks))
        out.write(b"\0" * (layout.tree_start_block * hbs - hash_area_offset - SUPERBLOCK_SIZE))
    if not layout.levels:
        data.seek(0)
        block = data.read(params.data_block_size)
        if copy_data_to_out:
            out.seek(0)
            out.write(block)
        if progress:
            progress(len(block))
        root = data_hasher.digest(block)
    else:
        first, count = layout.levels[0]
        if copy_data_to_out:
            _hash_level_copying(data, blocks, data_hasher, out, first * hbs, count, hbs, progress)
        elif _parallel_ok(data, blocks * params.data_block_size):
            _hash_data_level_parallel(data, blocks, data_hasher, out, first * hbs, count, hbs, progress)
        else:
            _hash_level(data, 0, blocks, data_hasher, out, first * hbs, count, hbs, progress)
        for i in range(1, len(layout.levels)):
            below_first, below_count = layout.levels[i - 1]
            first, count = layout.levels[i]
            out.flush()
            with open(out.name, "rb") as below:
                _hash_level(below, below_first * hbs, below_count, hash_hasher, out, first * hbs, count, hbs)
        out.flush()
        top_first, _ = layout.levels[-1]
        with open(out.name, "rb") as top:
            top.seek(top_first * hbs)
            root = hash_hasher.digest(top.read(hbs))
    out.seek(0, os.SEEK_END)
    if out.tell() < layout.end:
        out.truncate(layout.end)
    return VerityTree(params, layout, root, blocks * params.data_block_size)


# The data level is most of the work. hashlib releases the GIL only inside each 4 KiB update, and
# handing the GIL between two threads for every block costs more than it gains (measured: two threads
# are no faster than one), so a second process hashes the second half of the data into its own range
# of level-0 entries. Below this size the fork is not worth it.
PARALLEL_MIN_BYTES = 4 << 20


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _parallel_ok(data, size: int) -> bool:
    if size < PARALLEL_MIN_BYTES or _cpus() < 2 or not hasattr(os, "fork"):
        return False
    try:
        return stat.S_ISREG(os.fstat(data.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def _pread_exact(fd: int, buf: bytearray, want: int, offset: int) -> memoryview:
    view = memoryview(buf)[:want]
    got = 0
    while got < want:
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            raise InputError("the data image shrank while it was being read")
        got += n
    return view


def _hash_blocks_to(fd_in: int, first_block: int, n_blocks: int, hasher: "_BlockHasher", fd_out: int,
                    dst: int, buf: bytearray) -> None:
    """Level-0 entries of data blocks [first_block, first_block + n_blocks), written at ``dst``."""
    bs = hasher.block_size
    per_chunk = len(buf) // bs
    done = 0
    while done < n_blocks:
        count = min(per_chunk, n_blocks - done)
        entries = hasher.entries(_pread_exact(fd_in, buf, count * bs, (first_block + done) * bs))
        view = memoryview(entries)
        while view:
            n = os.pwrite(fd_out, view, dst)
            view, dst = view[n:], dst + n
        done += count


def _hash_pieces(queue: int, fd_in: int, blocks: int, piece_blocks: int, hasher: "_BlockHasher", fd_out: int,
                 dst_offset: int, progress: Progress | None) -> int:
    """Take piece numbers from the pipe ``queue`` until it is empty and hash each piece; returns the
    number of blocks hashed. Reads of 4 bytes from a pipe holding only 4-byte records are atomic, so
    each piece goes to exactly one process."""
    buf = bytearray(max(1, CHUNK_BYTES // hasher.block_size) * hasher.block_size)
    hashed = 0
    while True:
        record = os.read(queue, 4)
        if not record:
            return hashed
        first = int.from_bytes(record, "little") * piece_blocks
        count = min(piece_blocks, blocks - first)
        _hash_blocks_to(fd_in, first, count, hasher, fd_out, dst_offset + first * hasher.entry_size, buf)
        hashed += count
        if progress:
            progress(count * hasher.block_size)


def _hash_data_level_parallel(data, blocks, hasher, out, dst_offset, dst_blocks, hbs, progress) -> None:
    """Level 0 in two processes, this one and a forked child, sharing out pieces of the data through a
    pipe (whoever is free takes the next piece, so a busy CPU does not hold the other back); each
    writes the level-0 entries of its pieces at their place with pwrite. The child never returns
    into Python code: it exits with os._exit (status 0, 3 for a short read, 1 otherwise)."""
    bs = hasher.block_size
    chunk_blocks = max(1, CHUNK_BYTES // bs)
    # Whole read chunks per piece, and at most 1024 pieces: their numbers fit in the pipe at once.
    piece_blocks = chunk_blocks * max(1, -(-blocks // (chunk_blocks * 1024)))
    pieces = -(-blocks // piece_blocks)
    out.flush()
    fd_in, fd_out = data.fileno(), out.fileno()
    queue, feed = os.pipe()
    try:
        os.write(feed, b"".join(i.to_bytes(4, "little") for i in range(pieces)))
    finally:
        os.close(feed)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = 1
            try:
                _hash_pieces(queue, fd_in, blocks, piece_blocks, hasher, fd_out, dst_offset, None)
                status = 0
            except InputError:
                status = 3
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        try:
            mine = _hash_pieces(queue, fd_in, blocks, piece_blocks, hasher, fd_out, dst_offset, progress)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
            raise
    finally:
        os.close(queue)
    code = _reap(pid)
    if code == 3:
        raise InputError("the data image shrank while it was being read")
    if code != 0:
        raise SegwayError(f"hashing part of the data failed (worker status {code})")
    if progress:
        progress((blocks - mine) * bs)
    tail = dst_blocks * hbs - blocks * hasher.entry_size
    if tail:
        os.pwrite(fd_out, b"\0" * tail, dst_offset + blocks * hasher.entry_size)


def _reap(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        return os.waitstatus_to_exitcode(status)


def _hash_level_copying(data, blocks, hasher, out, dst_offset, dst_blocks, hbs, progress) -> None:
    """Level 0 for the appended layout: copy each chunk to the image while hashing it."""
    bs = hasher.block_size
    per_chunk = max(1, CHUNK_BYTES // bs)
    buf = bytearray(per_chunk * bs)
    data.seek(0)
    done = 0
    written = 0
    while done < blocks:
        count = min(per_chunk, blocks - done)
        view = _read_exact(data, buf, count * bs)
        out.seek(done * bs)
        out.write(view)
        entries = hasher.entries(view)
        out.seek(dst_offset + written)
        out.write(entries)
        written += len(entries)
        done += count
        if progress:
            progress(count * bs)
    out.seek(dst_offset + written)
    out.write(b"\0" * (dst_blocks * hbs - written))


# --- root-hash signature ------------------------------------------------------------------------

# What a parser of untrusted bytes (asn1crypto, int(), bytes.fromhex) raises on malformed input.
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def _one_line(text: object) -> str:
    """Parser messages (asn1crypto's among them) may span lines; an error message is one line."""
    return " ".join(str(text).split())


# DER AlgorithmIdentifiers as segway-sign writes them (the kernel's PKCS#7 parser reads the same set):
# digest → the signature algorithms that may go with it (RSA PKCS#1 v1.5, or ECDSA with that digest).
_DIGESTS = {name: bytes.fromhex("300d06096086480165030402" + last + "0500")
            for name, last in (("sha256", "01"), ("sha384", "02"), ("sha512", "03"))}
_SIGNATURE_ALGORITHMS = {
    _DIGESTS[name]: (bytes.fromhex("300d06092a864886f70d0101010500"), bytes.fromhex("300a06082a8648ce3d0403" + ecdsa))
    for name, ecdsa in (("sha256", "02"), ("sha384", "03"), ("sha512", "04"))
}


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


def parse_salt(text: str | None, digest_size: int = 32) -> bytes:
    """``random`` (the default, as veritysetup) → fresh bytes; ``-``/empty → no salt; else hex."""
    if text is None or text == "random":
        return os.urandom(digest_size)
    if text in ("-", ""):
        return b""
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"salt {text!r} is not hex, '-' or 'random'") from None


def derived_salt(image_sha256: bytes, digest_size: int = 32) -> bytes:
    """A salt tied to the image content, for releases that must be reproducible."""
    return hashlib.sha256(b"segway-verity-salt\0" + image_sha256).digest()[:digest_size]


def uuid_from_salt(salt: bytes) -> uuidlib.UUID:
    # A fixed namespace keeps the superblock reproducible when the salt is.
    return uuidlib.uuid5(uuidlib.UUID("6b0e54d5-3c4a-4f8e-9d59-2b8d7f0c6a11"), salt.hex())


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
) -> SignedVerity:
    """Hash ``image``, sign its root hash and write everything into ``out_dir`` atomically.

    Separate layout: ``<name>.hashtree`` beside the untouched image. Appended layout:
    ``<name>.verity.img`` = image + hash area at the next hash-block boundary (``--hash-offset``).
    Plus ``<name>.roothash`` (hex), ``<name>.roothash.p7s`` and ``verity.env``.
    """
    image = Path(image)
    files = output_names(image, appended, name)
    data = _open_regular(image)
    size = os.fstat(data.fileno()).st_size
    with data, output_dir(out_dir, force=force) as tmp:
        if appended:
            offset = -(-size // params.hash_block_size) * params.hash_block_size
            target = tmp / files["image"]
        else:
            offset = 0
            target = tmp / files["hashtree"]
        with open(target, "w+b") as out:
            tree = write_tree(data, size, out, params, offset, progress, copy_data_to_out=appended)
            if appended and size < offset:
                # Pad the tail of the last data block up to the hash area, as a file grown by dd would be.
                out.seek(size)
                out.write(b"\0" * (offset - size))
            out.flush()
            os.fsync(out.fileno())
        sig = sign_root_hash(tree.root_hex, key, cert)
        kind = "appended" if appended else "separate"
        text = env_text(tree, kind, files)
        parse_env(text)  # what we write must be what we read
        (tmp / files["roothash"]).write_text(tree.root_hex)
        (tmp / files["signature"]).write_bytes(sig)
        (tmp / files["env"]).write_text(text)
        for f in tmp.iterdir():
            f.chmod(0o644)
    return SignedVerity(tree, kind, files)


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
