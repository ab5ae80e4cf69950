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

import contextlib
import hashlib
import os
import shlex
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from cryptography import x509

from ..atomic import output_dir
from ..errors import InputError, UsageError, VerificationError
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
    params = VerityParams(
        salt=salt[:salt_size],
        data_block_size=dbs,
        hash_block_size=hbs,
        hash_algorithm=alg.rstrip(b"\0").decode("ascii", "replace"),
        superblock=True,
        uuid=uuidlib.UUID(bytes=uid),
    )
    return params, blocks


class _BlockHasher:
    """H(salt || block) for one block size; copies a pre-salted state so the salt is hashed once."""

    def __init__(self, params: VerityParams, block_size: int):
        self._base = hashlib.new(params.hash_algorithm)
        self._base.update(params.salt)
        self.block_size = block_size
        digest = params.digest_size
        self._pad = b"\0" * ((1 << (digest - 1).bit_length()) - digest)  # entries padded to 2^n bytes

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


def sign_root_hash(root_hex: str, key, cert: x509.Certificate) -> bytes:
    """Detached PKCS#7 (DER, no signed attributes, no certificates) over the hex root hash.

    This is ``openssl smime -sign -binary -noattr -nocerts`` as the kernel's
    ``verify_pkcs7_signature`` expects; the signature is checked before it is returned.
    """
    der = cms.sign_detached(root_hex.encode("ascii"), key, cert, attributes=False, include_certs=False)
    cms.verify_detached(der, root_hex.encode("ascii"), [cert])
    return der


def verify_root_hash_signature(sig_der: bytes, root_hex: str, certs: Iterable[x509.Certificate]) -> x509.Certificate:
    """Check the PKCS#7 over ``root_hex`` against ``certs``; returns the certificate that signed it."""
    return cms.verify_detached(sig_der, root_hex.encode("ascii"), list(certs))


# --- files: sign and verify a rootfs image --------------------------------------------------------

ENV_NAME = "verity.env"


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


def env_text(tree: VerityTree, layout_kind: str, files: dict[str, str]) -> str:
    """Shell-sourceable ``KEY=value`` lines: everything an initramfs needs to open the device."""
    p, lay = tree.params, tree.layout
    data_dev = "$VERITY_DATA_DEV"
    hash_dev = "$VERITY_DATA_DEV" if layout_kind == "appended" else "$VERITY_HASH_DEV"
    items = {
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
    }
    lines = [f"{k}={shlex.quote(v)}" for k, v in items.items()]
    # The dm table with the devices as variables: set VERITY_DATA_DEV (and VERITY_HASH_DEV) before
    # sourcing this file, then `dmsetup create --readonly NAME --table "$VERITY_TABLE"`.
    lines.append(f'VERITY_TABLE="{tree.table(data_dev, hash_dev)}"')
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"verity env line {n} is not KEY=value")
        try:
            parts = shlex.split(value)
        except ValueError:
            raise InputError(f"verity env line {n} has unbalanced quotes") from None
        env[key] = parts[0] if parts else ""
    return env


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
    try:
        size = image.stat().st_size
        data = open(image, "rb")
    except OSError as e:
        raise InputError(f"cannot read {image}: {e.strerror}") from None
    name = name or image.name.removesuffix(".img").removesuffix(".ext4")
    with data, output_dir(out_dir, force=force) as tmp:
        files = {"roothash": f"{name}.roothash", "signature": f"{name}.roothash.p7s", "env": ENV_NAME}
        if appended:
            files["image"] = f"{name}.verity.img"
            offset = -(-size // params.hash_block_size) * params.hash_block_size
            target = tmp / files["image"]
        else:
            files["image"] = image.name
            files["hashtree"] = f"{name}.hashtree"
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
        (tmp / files["roothash"]).write_text(tree.root_hex)
        (tmp / files["signature"]).write_bytes(sig)
        kind = "appended" if appended else "separate"
        (tmp / files["env"]).write_text(env_text(tree, kind, files))
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

    try:
        data = open(data_path, "rb")
        stored = open(hash_path, "rb")
    except OSError as e:
        raise InputError(f"cannot read {e.filename}: {e.strerror}") from None
    with data, stored, tempfile.NamedTemporaryFile(prefix="verity-", suffix=".tree") as scratch:
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


def verify_dir(out_dir: Path, certs: Iterable[x509.Certificate], data_path: Path | None = None,
               progress: Progress | None = None) -> VerifiedVerity:
    """Check a ``sign_image`` output: env, signature over the root hash, and the tree against the data.

    ``data_path`` is the rootfs for the separate layout (default: the image named in the env, looked
    up in ``out_dir`` and then beside it).
    """
    out_dir = Path(out_dir)
    env_path = out_dir / ENV_NAME
    try:
        env = parse_env(env_path.read_text())
    except OSError as e:
        raise InputError(f"cannot read {env_path}: {e.strerror}") from None
    try:
        root_hex = env["VERITY_ROOT_HASH"]
        params = VerityParams(
            salt=b"" if env["VERITY_SALT"] == "-" else bytes.fromhex(env["VERITY_SALT"]),
            data_block_size=int(env["VERITY_DATA_BLOCK_SIZE"]),
            hash_block_size=int(env["VERITY_HASH_BLOCK_SIZE"]),
            hash_algorithm=env["VERITY_HASH_ALGORITHM"],
            superblock=env["VERITY_SUPERBLOCK"] == "1",
            uuid=uuidlib.UUID(env["VERITY_UUID"]) if env.get("VERITY_UUID") else None,
        )
        blocks = int(env["VERITY_DATA_BLOCKS"])
        offset = int(env["VERITY_HASH_OFFSET"])
        kind = env["VERITY_LAYOUT"]
    except (KeyError, ValueError) as e:
        raise InputError(f"{env_path} is incomplete or malformed ({e})") from None
    sig_path = out_dir / env.get("VERITY_ROOT_HASH_SIG", "")
    rh_path = out_dir / env.get("VERITY_ROOT_HASH_FILE", "")
    try:
        sig = sig_path.read_bytes()
        if rh_path.read_text().strip() != root_hex:
            raise VerificationError(f"{rh_path.name} and {ENV_NAME} disagree on the root hash")
    except OSError as e:
        raise InputError(f"cannot read {e.filename}: {e.strerror}") from None
    signer = verify_root_hash_signature(sig, root_hex, certs)
    if kind == "appended":
        data_path = hash_path = out_dir / env["VERITY_IMAGE"]
    else:
        hash_path = out_dir / env["VERITY_HASH_FILE"]
        if data_path is None:
            candidates = [out_dir / env["VERITY_IMAGE"], out_dir.parent / env["VERITY_IMAGE"]]
            data_path = next((c for c in candidates if c.exists()), candidates[0])
    if params.superblock:
        with contextlib.suppress(OSError), open(hash_path, "rb") as f:
            f.seek(offset)
            sb_params, sb_blocks = parse_superblock(f.read(SUPERBLOCK_SIZE))
            if (sb_params, sb_blocks) != (params, blocks):
                raise VerificationError(f"the superblock in {hash_path.name} disagrees with {ENV_NAME}")
    tree = verify_tree(data_path, hash_path, offset, params, blocks, root_hex, progress)
    return VerifiedVerity(tree, signer, env)
