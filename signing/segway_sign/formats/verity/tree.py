"""dm-verity hash trees: parameters, layout, superblock, and the tree with its root hash.

The tree is byte-identical to what ``veritysetup format`` (cryptsetup 2.6, hash type 1) writes with the
same parameters: level hashes are ``H(salt || block)``, the top level is stored first, each level is
padded to whole hash blocks, and the optional 512-byte superblock sits at the start of the hash area with
the tree starting at the next hash-block boundary (cryptsetup ``lib/verity/verity_hash.c``,
``VERITY_hash_offset_block`` in ``lib/verity/verity.c``).

The image is streamed: data is read in chunks and level hashes are written to (and read back from) the
output file, so memory stays flat for any image size.

The root-hash signature, ``verity.env`` and the signed output directory are in :mod:`.sign`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import struct
import uuid as uuidlib
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ...errors import InputError, SegwayError, UsageError

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
        # Reading and writing the same file (upper levels) is fine: we read level i-1, write level i.
        pos = src.tell()
        entries = hasher.entries(view)
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
    on_data_level: Callable[[], None] | None = None,
) -> VerityTree:
    """Hash ``data`` and write the superblock and tree into ``out`` at ``hash_area_offset``.

    ``on_data_level`` is called once the data level is being hashed, after the second process is
    forked: a thread it starts (e.g. another digest of the data) never runs across the fork.
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
        if on_data_level:
            on_data_level()
        data.seek(0)
        block = data.read(params.data_block_size)
        if progress:
            progress(len(block))
        root = data_hasher.digest(block)
    else:
        first, count = layout.levels[0]
        if _parallel_ok(data, blocks * params.data_block_size):
            _hash_data_level_parallel(data, blocks, data_hasher, out, first * hbs, count, hbs, progress,
                                      on_data_level)
        else:
            if on_data_level:
                on_data_level()
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


def _hash_data_level_parallel(data, blocks, hasher, out, dst_offset, dst_blocks, hbs, progress,
                              started: Callable[[], None] | None = None) -> None:
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
            if started:
                started()
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
