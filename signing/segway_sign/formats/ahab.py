"""AHAB container signing (i.MX 8QXP/8QM/8DXL/8ULP, i.MX 9x): SRK table, signature block, SRK hash.

Little-endian. Container header ``ver(1) len(2) tag 0x87``, flags, sw_version, fuse_version,
num_images, signature-block offset; 128-byte image entries; signature block ``ver len tag 0x90`` with
certificate / SRK table / signature / blob offsets (CST ``src/lib/front_end/ahab_types.h``). The
signature covers the container from its first byte up to the signature structure, with the digest the
SRK record names; ECDSA signatures are raw r‖s.

With an SGK (signing key), the signature block also carries a certificate (tag 0xAF, or 0xA0 when it
holds a UUID): ``ver len tag``, signature offset, inverted permissions, permissions, optional 16-byte
UUID, the SGK as an SRK-style record, then the SRK's signature over everything before it. The SGK then
signs the container. Version-2 containers (PQC, i.MX95 B0) and their version-2 certificates are not
handled.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..crypto import ecdsa_der, ecdsa_raw
from ..errors import InputError, UsageError, VerificationError

TAG_CONTAINER = 0x87
TAG_SIG_BLOCK = 0x90
TAG_SRK_TABLE = 0xD7
TAG_SRK_RECORD = 0xE1
TAG_SIGNATURE = 0xD8
TAG_CERTIFICATE, TAG_CERTIFICATE_UUID = 0xAF, 0xA0
CERTIFICATE_VERSION = 0
UUID_SIZE = 16
# OEM certificate permissions (one byte; the ROM checks "container" before accepting an SGK signature).
CERT_PERMISSIONS = {"container": 0x01, "phbc-debug": 0x02, "soc-debug-domain-1": 0x04,
                    "soc-debug-domain-2": 0x08, "life-cycle": 0x10, "monotonic-counter": 0x20}
PERM_CONTAINER = CERT_PERMISSIONS["container"]
SRK_TABLE_VERSION = 0x42
SRK_FLAG_CA = 0x80
SIGN_RSA, SIGN_RSA_PSS, SIGN_ECDSA = 0x21, 0x22, 0x27
HASHES = {"sha256": (0, hashes.SHA256), "sha384": (1, hashes.SHA384), "sha512": (2, hashes.SHA512)}
_HASH_BY_ID = {v[0]: (k, v[1]) for k, v in HASHES.items()}
_CURVES = {"secp256r1": (1, 32, "sha256"), "secp384r1": (2, 48, "sha384"), "secp521r1": (3, 66, "sha512")}
_RSA_SIZES = {2048: 5, 3072: 6, 4096: 7}
SRK_SET_NONE, SRK_SET_NXP, SRK_SET_OEM = 0, 1, 2
CONTAINER_ALIGN = 0x400
IMAGE_ENTRY_SIZE = 128
IMAGE_HASHES = {0: hashlib.sha256, 1: hashlib.sha384, 2: hashlib.sha512}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _malformed_is_input_error(func):
    """Offsets read from the image may point anywhere: a short read is bad input, not a crash."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (struct.error, IndexError) as err:
            raise InputError(f"malformed AHAB container: {err}") from None
    return wrapper


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ------------------------------------------------------------------------------------ SRK


def srk_record(public_key: PublicKey, ca: bool = False, digest: str | None = None, rsa_pss: bool = False) -> bytes:
    """One SRK record (tag 0xE1). ``digest`` defaults to the curve's (P-256 → SHA-256 …), SHA-256
    for RSA. ``rsa_pss`` selects RSA-PSS (what SPSDK uses for ELE parts) over PKCS#1 v1.5."""
    flags = SRK_FLAG_CA if ca else 0
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(public_key.curve.name)
        if curve is None:
            raise InputError(f"AHAB cannot use EC curve {public_key.curve.name} (P-256, P-384, P-521)")
        curve_id, size, default_digest = curve
        n = public_key.public_numbers()
        a, b = n.x.to_bytes(size, "big"), n.y.to_bytes(size, "big")
        alg, key_size = SIGN_ECDSA, curve_id
    elif isinstance(public_key, rsa.RSAPublicKey):
        key_size = _RSA_SIZES.get(public_key.key_size)
        if key_size is None:
            raise InputError(f"AHAB cannot use RSA-{public_key.key_size} (2048, 3072, 4096)")
        n = public_key.public_numbers()
        a = n.n.to_bytes((public_key.key_size + 7) // 8, "big")
        b = n.e.to_bytes(max(1, (n.e.bit_length() + 7) // 8), "big")
        alg, default_digest = (SIGN_RSA_PSS if rsa_pss else SIGN_RSA), "sha256"
    else:
        raise InputError(f"AHAB SRKs must be RSA or EC keys, not {type(public_key).__name__}")
    digest = digest or default_digest
    if digest not in HASHES:
        raise UsageError(f"unknown digest {digest!r} (sha256, sha384, sha512)")
    body = struct.pack("<BBBBHH", HASHES[digest][0], key_size, 0, flags, len(a), len(b)) + a + b
    return struct.pack("<BHB", TAG_SRK_RECORD, 4 + len(body), alg) + body


def srk_table(public_keys: Sequence[PublicKey], ca: bool = False, digest: str | None = None,
              rsa_pss: bool = False) -> bytes:
    """The AHAB SRK table: exactly four records (all four are revocable)."""
    if len(public_keys) != 4:
        raise UsageError(f"an AHAB SRK table holds exactly 4 keys, got {len(public_keys)}")
    records = b"".join(srk_record(k, ca, digest, rsa_pss) for k in public_keys)
    return struct.pack("<BHB", TAG_SRK_TABLE, 4 + len(records), SRK_TABLE_VERSION) + records


@dataclass(frozen=True)
class SrkRecord:
    raw: bytes
    alg: int
    digest: str
    public_key: PublicKey

    @property
    def ca(self) -> bool:
        """The SRK may sign SGK certificates."""
        return bool(self.raw[7] & SRK_FLAG_CA)


def parse_srk_record(data: bytes, off: int, end: int, where: str) -> SrkRecord:
    """One SRK-style record (tag 0xE1) at ``off`` that must end by ``end``; ``where`` names the
    structure holding it in errors (an SRK table or an SGK certificate)."""
    if off + 12 > end or data[off] != TAG_SRK_RECORD:
        raise InputError(f"{where}: bad key record at offset {off}")
    (rlen,) = struct.unpack_from("<H", data, off + 1)
    raw = data[off : off + rlen]
    if rlen < 12 or off + rlen > end or len(raw) != rlen:
        raise InputError(f"{where}: key record at offset {off} overruns its structure")
    alg = raw[3]
    hash_id, key_size, reserved, _flags, la, lb = struct.unpack_from("<BBBBHH", raw, 4)
    if hash_id not in _HASH_BY_ID or 12 + la + lb != rlen:
        raise InputError(f"{where}: inconsistent key record at offset {off}")
    if reserved:
        raise InputError(f"{where}: key record at offset {off} has a non-zero reserved byte")
    a, b = raw[12 : 12 + la], raw[12 + la :]
    try:
        if alg == SIGN_ECDSA:
            curve = {1: ec.SECP256R1, 2: ec.SECP384R1, 3: ec.SECP521R1}[key_size]()
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(a, "big"), int.from_bytes(b, "big"),
                                                curve).public_key()
        elif alg in (SIGN_RSA, SIGN_RSA_PSS):
            key = rsa.RSAPublicNumbers(int.from_bytes(b, "big"), int.from_bytes(a, "big")).public_key()
        else:
            raise InputError(f"{where}: unsupported algorithm 0x{alg:02x}")
    except (KeyError, ValueError):
        raise InputError(f"{where}: unusable key in record at offset {off}") from None
    return SrkRecord(bytes(raw), alg, _HASH_BY_ID[hash_id][0], key)


def parse_srk_table(table: bytes) -> list[SrkRecord]:
    if len(table) < 4 or table[0] != TAG_SRK_TABLE or table[3] != SRK_TABLE_VERSION:
        raise InputError("not an AHAB SRK table (tag 0xD7, version 0x42)")
    (length,) = struct.unpack_from("<H", table, 1)
    if length > len(table):
        raise InputError("AHAB SRK table: length field exceeds the data")
    records, off = [], 4
    while off < length:
        records.append(parse_srk_record(table, off, length, "AHAB SRK table"))
        off += len(records[-1].raw)
    if len(records) != 4:
        raise InputError(f"AHAB SRK table holds {len(records)} records, 4 expected")
    return records


def srk_hash(table: bytes, algorithm: str = "sha256") -> bytes:
    """SRK hash to fuse: the digest of the whole table (SHA-512 on SECO parts such as i.MX8QXP/8QM,
    SHA-256 on ELE parts such as i.MX8ULP/i.MX93)."""
    parse_srk_table(table)
    if algorithm not in ("sha256", "sha512"):
        raise UsageError("the SRK hash is sha256 or sha512")
    return hashlib.new(algorithm, table).digest()


def fuse_words(digest: bytes) -> list[int]:
    """32-bit fuse values in order (little-endian words of the hash)."""
    return list(struct.unpack(f"<{len(digest) // 4}I", digest))


# Where U-Boot's ``fuse prog`` burns the SRK hash (bank, first word, count).
FUSE_LAYOUTS = {"imx8qxp": (0, 730, 16), "imx8qm": (0, 722, 16), "imx93": (16, 0, 8)}
DEFAULT_FUSE_HASH = {"imx8qxp": "sha512", "imx8qm": "sha512", "imx93": "sha256", "imx8ulp": "sha256"}


def fuse_prog_lines(words: Sequence[int], soc: str) -> list[str]:
    layout = FUSE_LAYOUTS.get(soc)
    if layout is None:
        raise UsageError(f"unknown AHAB SoC {soc!r} (one of {', '.join(FUSE_LAYOUTS)})")
    bank, first, count = layout
    if len(words) != count:
        raise UsageError(f"{soc} takes a {count * 32}-bit SRK hash, got {len(words) * 32} bits")
    return [f"fuse prog -y {bank} {first + i} 0x{w:08X}" for i, w in enumerate(words)]


# ------------------------------------------------------------------------------ containers


@dataclass(frozen=True)
class ImageEntry:
    index: int
    offset: int  # from the container start
    size: int
    flags: int
    hash: bytes

    @property
    def hash_type(self) -> int:
        return (self.flags >> 8) & 0x7

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & (1 << 11))


@dataclass(frozen=True)
class Container:
    offset: int
    version: int
    length: int
    flags: int
    sw_version: int
    fuse_version: int
    images: tuple[ImageEntry, ...]
    sig_blk_offset: int

    @property
    def srk_set(self) -> int:
        return self.flags & 0x3


def parse_container(image: bytes, offset: int) -> Container:
    if offset < 0 or offset + 16 > len(image):
        raise InputError(f"no AHAB container at 0x{offset:x}: the image is too short")
    version, length, tag, flags, sw, fuse, count, sig_off = struct.unpack_from("<BHBIHBBH", image, offset)
    if tag != TAG_CONTAINER:
        raise InputError(f"no AHAB container at 0x{offset:x} (tag 0x{tag:02x})")
    if version != 0:
        raise InputError(f"AHAB container at 0x{offset:x} has version {version}; only version 0 is supported")
    if not 1 <= count <= 8 or offset + 16 + count * IMAGE_ENTRY_SIZE > len(image):
        raise InputError(f"AHAB container at 0x{offset:x}: {count} images do not fit")
    entries = []
    for i in range(count):
        e = offset + 16 + i * IMAGE_ENTRY_SIZE
        img_off, size, _load, _entry, iflags, _meta = struct.unpack_from("<IIQQII", image, e)
        entries.append(ImageEntry(i, img_off, size, iflags, bytes(image[e + 32 : e + 96])))
    if sig_off and sig_off < 16 + count * IMAGE_ENTRY_SIZE:
        raise InputError(f"AHAB container at 0x{offset:x}: signature block overlaps the image array")
    return Container(offset, version, length, flags, sw, fuse, tuple(entries), sig_off)


def find_containers(image: bytes, limit: int = 16) -> list[Container]:
    """Containers at 1 KiB steps (where imx-mkimage and spsdk put them)."""
    found = []
    for off in range(0, len(image) - 16, CONTAINER_ALIGN):
        if image[off + 3] == TAG_CONTAINER and image[off] == 0:
            try:
                found.append(parse_container(image, off))
            except InputError:
                continue
            if len(found) >= limit:
                break
    return found


def _check_images(image: bytes, c: Container) -> None:
    for e in c.images:
        if e.encrypted:
            raise InputError(f"container 0x{c.offset:x} image {e.index} is encrypted; not supported")
        start = c.offset + e.offset
        if start + e.size > len(image):
            raise InputError(f"container 0x{c.offset:x} image {e.index} lies outside the file")
        algo = IMAGE_HASHES.get(e.hash_type)
        if algo is None:
            raise InputError(f"container 0x{c.offset:x} image {e.index}: unsupported hash type {e.hash_type}")
        digest = algo(image[start : start + e.size]).digest()
        if e.hash[: len(digest)] != digest:
            raise VerificationError(f"container 0x{c.offset:x} image {e.index}: its hash does not match its data")
        if any(e.hash[len(digest) :]):  # the 64-byte field is zero-padded (SPSDK refuses anything else)
            raise VerificationError(f"container 0x{c.offset:x} image {e.index}: non-zero bytes after its hash")


def _raw_signature(public: PublicKey, der_or_raw: bytes) -> bytes:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ecdsa_raw(der_or_raw, _CURVES[public.curve.name][1])
    return der_or_raw


def _rsa_padding(alg: int, digest: str):
    if alg == SIGN_RSA_PSS:  # salt as long as the digest, MGF1 with the same hash (as SPSDK)
        return padding.PSS(padding.MGF1(HASHES[digest][1]()), HASHES[digest][1].digest_size)
    return padding.PKCS1v15()


def _verify(public: PublicKey, alg: int, digest: str, signature: bytes, data: bytes,
            what: str = "container signature", signer: str = "SRK") -> None:
    algo = HASHES[digest][1]()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(ecdsa_der(signature), data, ec.ECDSA(algo))
        else:
            public.verify(signature, data, _rsa_padding(alg, digest), algo)
    except InvalidSignature:
        raise VerificationError(f"AHAB {what} does not verify with the {signer}") from None


def _signature_length(public: PublicKey) -> int:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return 2 * _CURVES[public.curve.name][1]
    return (public.key_size + 7) // 8


def _sign(key, record: SrkRecord, data: bytes) -> bytes:
    """Raw AHAB signature of ``data`` by ``key`` with the algorithm and digest ``record`` names."""
    algo = HASHES[record.digest][1]()
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        signature = _raw_signature(public, key.sign(data, ec.ECDSA(algo)))
    else:
        signature = key.sign(data, _rsa_padding(record.alg, record.digest), algo)
    if len(signature) != _signature_length(public):
        raise VerificationError("the token returned a signature of unexpected length")
    return signature


def _signature_struct(signature: bytes) -> bytes:
    return struct.pack("<BHBI", 0, 8 + len(signature), TAG_SIGNATURE, 0) + signature


def _same_key_type(a: PublicKey, b: PublicKey) -> bool:
    if isinstance(a, ec.EllipticCurvePublicKey) and isinstance(b, ec.EllipticCurvePublicKey):
        return a.curve.name == b.curve.name
    return isinstance(a, rsa.RSAPublicKey) and isinstance(b, rsa.RSAPublicKey) and a.key_size == b.key_size


# ----------------------------------------------------------------------------- SGK certificate


def permission_bits(names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        if name not in CERT_PERMISSIONS:
            raise UsageError(f"unknown SGK certificate permission {name!r} ({', '.join(CERT_PERMISSIONS)})")
        bits |= CERT_PERMISSIONS[name]
    return bits


def permission_names(bits: int) -> list[str]:
    return [name for name, bit in CERT_PERMISSIONS.items() if bits & bit] + \
        [f"0x{1 << i:02x}" for i in range(8) if bits & (1 << i) and (1 << i) not in CERT_PERMISSIONS.values()]


@dataclass(frozen=True)
class SgkCertificate:
    raw: bytes
    permissions: int
    uuid: bytes | None
    record: SrkRecord
    signature: bytes

    @property
    def signed_part(self) -> bytes:
        """What the SRK signs: the certificate up to its signature structure."""
        return self.raw[: struct.unpack_from("<H", self.raw, 4)[0]]


def sgk_certificate(sgk_public: PublicKey, srk_key, srk: SrkRecord, permissions: int = PERM_CONTAINER,
                    uuid: bytes | None = None) -> bytes:
    """The AHAB certificate for an SGK, signed by the SRK ``srk_key`` (whose table record is ``srk``).
    The SGK record takes the SRK record's algorithm and digest: the ROM checks the container
    signature with the digest the SRK names."""
    if not 0 < permissions <= 0xFF:
        raise UsageError("SGK certificate permissions are one byte and not empty")
    if uuid is not None and len(uuid) != UUID_SIZE:
        raise UsageError(f"an SGK certificate UUID is {UUID_SIZE} bytes, got {len(uuid)}")
    if not isinstance(sgk_public, ec.EllipticCurvePublicKey):
        # RSA(-PSS) certificates have no independent verifier here (spsdk 2.2 checks them as PKCS#1 v1.5).
        raise UsageError("SGK certificates are made for EC keys only (P-256, P-384, P-521)")
    if not _same_key_type(sgk_public, srk.public_key):
        raise UsageError("the SGK must be the same kind and size of key as the SRK that certifies it")
    key_record = srk_record(sgk_public, digest=srk.digest, rsa_pss=srk.alg == SIGN_RSA_PSS)
    body = (uuid or b"") + key_record
    sig_off = 8 + len(body)
    total = sig_off + 8 + _signature_length(srk.public_key)
    tag = TAG_CERTIFICATE_UUID if uuid is not None else TAG_CERTIFICATE
    head = struct.pack("<BHBHBB", CERTIFICATE_VERSION, total, tag, sig_off, ~permissions & 0xFF, permissions)
    signature = _sign(srk_key, srk, head + body)
    cert = head + body + _signature_struct(signature)
    parsed = parse_certificate(cert)
    _verify(srk.public_key, srk.alg, srk.digest, parsed.signature, parsed.signed_part,
            what="SGK certificate signature", signer="SRK")
    return cert


def parse_certificate(data: bytes) -> SgkCertificate:
    where = "AHAB SGK certificate"
    if len(data) < 8 or data[3] not in (TAG_CERTIFICATE, TAG_CERTIFICATE_UUID):
        raise InputError(f"{where}: bad tag")
    version, length, tag, sig_off, inv_perm, perm = struct.unpack_from("<BHBHBB", data, 0)
    if version != CERTIFICATE_VERSION:
        raise InputError(f"{where}: version {version} is not supported (only version 0)")
    if length > len(data) or sig_off + 8 > length:
        raise InputError(f"{where}: lengths exceed the data")
    if inv_perm != ~perm & 0xFF:
        raise VerificationError(f"{where}: the permissions and their inverse disagree")
    off, uuid = 8, None
    if tag == TAG_CERTIFICATE_UUID:
        uuid, off = bytes(data[8 : 8 + UUID_SIZE]), 8 + UUID_SIZE
    record = parse_srk_record(data, off, sig_off, where)
    if off + len(record.raw) != sig_off:
        raise InputError(f"{where}: the signature does not follow the key")
    sver, slen, stag, sres = struct.unpack_from("<BHBI", data, sig_off)
    if stag != TAG_SIGNATURE or sig_off + slen != length or slen <= 8:
        raise InputError(f"{where}: no signature structure at its signature offset")
    if sver or sres:  # outside what the SRK signs: only the values every tool writes are accepted
        raise VerificationError(f"{where}: its signature header has version {sver} and reserved bytes "
                                f"0x{sres:08x}; both must be zero")
    return SgkCertificate(bytes(data[:length]), perm, uuid, record, bytes(data[sig_off + 8 : length]))


def verify_certificate(cert: SgkCertificate, srk: SrkRecord) -> None:
    """The SRK signed the certificate, and the certificate allows signing containers."""
    if len(cert.signature) != _signature_length(srk.public_key):
        raise VerificationError(f"AHAB SGK certificate: its signature is {len(cert.signature)} bytes; "
                                f"the SRK makes {_signature_length(srk.public_key)}")
    _verify(srk.public_key, srk.alg, srk.digest, cert.signature, cert.signed_part,
            what="SGK certificate signature", signer="SRK")
    if not cert.permissions & PERM_CONTAINER:
        raise VerificationError("the SGK certificate does not grant the 'container' permission")


@_malformed_is_input_error
def sign_container(image: bytes, offset: int, table: bytes, srk_index: int, key,
                   revoke_mask: int | None = None, sgk_key=None, sgk_permissions: int = PERM_CONTAINER,
                   sgk_uuid: bytes | None = None) -> bytes:
    """Return ``image`` with the container at ``offset`` signed by SRK ``srk_index`` (0-based), or,
    with ``sgk_key``, signed by that SGK under a certificate the SRK ``key`` signs."""
    c = parse_container(image, offset)
    if c.srk_set == SRK_SET_NXP:
        raise UsageError(f"container 0x{offset:x} is signed by NXP; it must stay as delivered")
    records = parse_srk_table(table)
    if not 0 <= srk_index < 4:
        raise UsageError(f"SRK index {srk_index + 1} is outside 1..4")
    record = records[srk_index]
    public = key.public_key()
    if public.public_numbers() != record.public_key.public_numbers():
        raise UsageError(f"the signing key is not SRK {srk_index + 1} of the table")
    if c.sig_blk_offset:
        old = c.offset + c.sig_blk_offset
        _v, _l, tag, _cert, _srk, _sig, blob, _kid = struct.unpack_from("<BHBHHHHI", image, old)
        if tag != TAG_SIG_BLOCK:
            raise InputError(f"container 0x{offset:x}: no signature block at its signature-block offset")
        if blob:
            raise InputError(f"container 0x{offset:x} carries a key blob (encrypted boot); not supported")
    _check_images(image, c)

    cert, signer, signer_record = b"", key, record
    if sgk_key is not None:
        if not sgk_permissions & PERM_CONTAINER:
            raise UsageError("an SGK that signs containers needs the 'container' permission")
        if not record.ca:
            raise UsageError(f"SRK {srk_index + 1} lacks the CA flag, so it cannot certify an SGK "
                             "(build the table with `ahab srk --ca`)")
        cert = sgk_certificate(sgk_key.public_key(), key, record, sgk_permissions, sgk_uuid)
        signer, signer_record = sgk_key, parse_certificate(cert).record
    sig_blk_off = c.sig_blk_offset or _align(16 + len(c.images) * IMAGE_ENTRY_SIZE, 16)
    sig_len = _signature_length(signer.public_key())
    # CST order: SRK table at 0x10, then the signature, then the certificate, each 8-byte aligned.
    srk_off = 0x10
    sig_off = _align(srk_off + len(table), 8)
    cert_off = _align(sig_off + 8 + sig_len, 8) if cert else 0
    block_len = _align(cert_off + len(cert) if cert else sig_off + 8 + sig_len, 8)
    total = sig_blk_off + block_len
    first_image = min(e.offset for e in c.images)
    if total > 0xFFFF or total > first_image:
        raise UsageError(f"container 0x{offset:x}: the signature block ({block_len} bytes) would overlap image "
                         f"data at +0x{first_image:x}; rebuild the image with room for it")

    flags = (c.flags & ~0x3F) | SRK_SET_OEM | (srk_index << 4)
    if revoke_mask is not None:
        if not 0 <= revoke_mask <= 0xF:
            raise UsageError("the SRK revoke mask is 4 bits (0x0-0xF)")
        flags = (flags & ~0xF00) | (revoke_mask << 8)
    out = bytearray(image)
    struct.pack_into("<BHBI", out, offset, 0, total, TAG_CONTAINER, flags)
    struct.pack_into("<H", out, offset + 12, sig_blk_off)
    base = offset + sig_blk_off
    out[base : base + block_len] = bytes(block_len)
    struct.pack_into("<BHBHHHHI", out, base, 0, block_len, TAG_SIG_BLOCK, cert_off, srk_off, sig_off, 0, 0)
    out[base + srk_off : base + srk_off + len(table)] = table
    if cert:
        out[base + cert_off : base + cert_off + len(cert)] = cert
    struct.pack_into("<BHBI", out, base + sig_off, 0, 8 + sig_len, TAG_SIGNATURE, 0)
    signature = _sign(signer, signer_record, bytes(out[offset : base + sig_off]))
    out[base + sig_off + 8 : base + sig_off + 8 + sig_len] = signature
    result = bytes(out)
    verify_container(result, offset, table)
    return result


@_malformed_is_input_error
def verify_container(image: bytes, offset: int, table: bytes | None = None) -> dict:
    """Check a signed container: image hashes, SRK table (if given, must match), signature, and that
    every byte of the container header outside what is signed is what the format allows.

    The signature covers the container from its start to the signature structure. After it come
    the signature header (version, length, tag, then a type byte and three reserved bytes: SPSDK
    reads the type, 0 for SRK signatures, 0x10 for CMAC), the signature, the SGK certificate if any
    (signed by the SRK, except its own signature header and signature) and zero padding up to the
    end of the signature block, which is the end of the container header. Each of those is checked:
    fixed fields must hold the only values supported (all zero for type and reserved bytes), lengths
    must match the keys, padding must be zero. Reserved fields inside the signed part are refused
    when non-zero too (header bytes 14-15, the key identifier without a key blob, the SRK records'
    reserved byte, the zero padding of image hashes), so the error names them.
    """
    c = parse_container(image, offset)
    where = f"container 0x{offset:x}"
    if c.srk_set != SRK_SET_OEM:
        raise VerificationError(f"{where} is not signed with OEM keys")
    if not c.sig_blk_offset:
        raise VerificationError(f"{where} has no signature block")
    (reserved,) = struct.unpack_from("<H", image, offset + 14)
    if reserved:
        raise VerificationError(f"{where}: its reserved header bytes (+0xe, +0xf) are 0x{reserved:04x}, not zero")
    base = offset + c.sig_blk_offset
    bver, blen, tag, cert_off, srk_off, sig_off, blob, key_id = struct.unpack_from("<BHBHHHHI", image, base)
    if tag != TAG_SIG_BLOCK or not srk_off or not sig_off:
        raise VerificationError(f"{where}: signature block without SRK table or signature")
    if bver:
        raise VerificationError(f"{where}: signature block version {bver}; only version 0 is supported")
    if blob:
        raise InputError(f"{where} carries a key blob (encrypted boot); not supported")
    if key_id:
        raise VerificationError(f"{where}: key identifier 0x{key_id:08x} without a key blob; it must be zero")
    if c.length != c.sig_blk_offset + blen:
        raise VerificationError(f"{where}: its length 0x{c.length:x} is not the end of its signature block "
                                f"(0x{c.sig_blk_offset + blen:x})")
    if offset + c.length > len(image):
        raise InputError(f"{where}: the container header runs past the end of the file")
    if not 16 <= srk_off < sig_off or sig_off + 8 > blen or (cert_off and not 16 <= cert_off < blen):
        raise InputError(f"{where}: signature block offsets outside the block")
    (tlen,) = struct.unpack_from("<H", image, base + srk_off + 1)
    if srk_off + tlen > sig_off:
        raise VerificationError(f"{where}: the SRK table runs into the signature (outside what is signed)")
    found_table = bytes(image[base + srk_off : base + srk_off + tlen])
    if table is not None and found_table != table:
        raise VerificationError(f"{where} carries a different SRK table")
    records = parse_srk_table(found_table)
    srk_index = (c.flags >> 4) & 0x3
    record = records[srk_index]
    sver, slen, stag, stype = struct.unpack_from("<BHBI", image, base + sig_off)
    if stag != TAG_SIGNATURE:
        raise VerificationError(f"{where}: no signature structure")
    if sver:
        raise VerificationError(f"{where}: signature structure version {sver}; only version 0 is supported")
    if stype:
        raise VerificationError(f"{where}: the signature header's type and reserved bytes are 0x{stype:08x}; "
                                "only SRK signatures (all zero) are supported")
    if sig_off + slen > blen:
        raise InputError(f"{where}: the signature runs past the signature block")
    signature = image[base + sig_off + 8 : base + sig_off + slen]
    report = {"offset": offset, "srk_index": srk_index, "revoke_mask": (c.flags >> 8) & 0xF,
              "images": len(c.images), "digest": record.digest}
    signer, signer_name = record, "SRK"
    parts = [(srk_off, srk_off + tlen), (sig_off, sig_off + slen)]
    if cert_off:
        if cert_off + 8 > blen:
            raise InputError(f"{where}: the SGK certificate lies outside the signature block")
        if not record.ca:
            raise VerificationError(f"{where}: SRK {srk_index + 1} is not a CA yet certifies an SGK")
        cert = parse_certificate(image[base + cert_off : base + blen])
        verify_certificate(cert, record)
        signer, signer_name = cert.record, "SGK"
        parts.append((cert_off, cert_off + len(cert.raw)))
        report.update(sgk=True, sgk_permissions=permission_names(cert.permissions),
                      sgk_uuid=cert.uuid.hex() if cert.uuid is not None else None, digest=cert.record.digest)
    ordered = sorted(parts)
    if any(a_end > b_start for (_, a_end), (b_start, _) in zip(ordered, ordered[1:])):
        raise VerificationError(f"{where}: the SRK table, signature and certificate overlap")
    if slen - 8 != _signature_length(signer.public_key):
        raise VerificationError(f"{where}: a {slen - 8}-byte signature; the {signer_name} makes "
                                f"{_signature_length(signer.public_key)}-byte signatures")
    # Nothing after the signed part but the structures above and zero padding.
    tail = bytearray(image[base + sig_off : base + blen])
    for start, end in parts:
        if end > sig_off:
            lo = max(start, sig_off) - sig_off
            tail[lo : end - sig_off] = bytes(end - sig_off - lo)
    stray = next((i for i, b in enumerate(tail) if b), None)
    if stray is not None:
        raise VerificationError(f"{where}: byte 0x{base + sig_off + stray:x} of the signature block (after the "
                                "signed part, in no structure) is not zero")
    _check_images(image, c)
    _verify(signer.public_key, signer.alg, signer.digest, signature, image[offset : base + sig_off],
            signer=signer_name)
    return report


def verify_image(image: bytes, table: bytes | None = None, offsets: Sequence[int] | None = None) -> list[dict]:
    """Check the given containers, or every container found: each OEM-signed one must verify, an
    unsigned one (or one with an undefined SRK set) is refused, NXP-signed ones are left to the ROM
    (they carry NXP's keys) and reported as such."""
    if offsets is not None:
        return [verify_container(image, off, table) for off in offsets]
    containers = find_containers(image)
    reports = []
    for c in containers:
        if c.srk_set == SRK_SET_NXP:
            reports.append({"offset": c.offset, "nxp": True})
        elif c.srk_set == SRK_SET_OEM:
            reports.append(verify_container(image, c.offset, table))
        else:
            raise VerificationError(f"container 0x{c.offset:x} is not signed (SRK set {c.srk_set})")
    if not any(not r.get("nxp") for r in reports):
        raise UsageError("no OEM-signed AHAB container found")
    return reports


def sign_image(image: bytes, table: bytes, srk_index: int, key, offsets: Sequence[int] | None = None,
               revoke_mask: int | None = None, sgk_key=None, sgk_permissions: int = PERM_CONTAINER,
               sgk_uuid: bytes | None = None) -> tuple[bytes, list[int]]:
    """Sign the given containers, or every container not signed by NXP; return (image, offsets)."""
    if offsets is None:
        offsets = [c.offset for c in find_containers(image) if c.srk_set != SRK_SET_NXP]
        if not offsets:
            raise InputError("no AHAB container to sign (none found, or all are NXP-signed)")
    for off in offsets:
        image = sign_container(image, off, table, srk_index, key, revoke_mask, sgk_key, sgk_permissions, sgk_uuid)
    return image, list(offsets)
