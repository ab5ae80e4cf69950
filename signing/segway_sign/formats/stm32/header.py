"""STM32MP FSBL image header: parse, create, sign and verify.

Header v1 (STM32MP15, 256 bytes) and v2.0 / v2.2 (STM32MP13 / STM32MP2, 128-byte base plus
extension headers, 512 bytes in total). All fields are little-endian. The ROM hashes with SHA-256
the bytes from ``header_version`` (offset 72) to the end of the payload as given by
``image_length``; trailing file padding is outside the signature. The signature is ECDSA P-256 or
brainpoolP256t1 (the ROM's "Brainpool 256"), stored as raw r||s. ``cryptography`` lacks the twisted
Brainpool curve, so those keys are ``RawECPublicKey``/``TokenRawECKey`` and their signatures are
checked by OpenSSL.

Layouts follow TF-A ``tools/stm32image/stm32image.c`` and ``plat/st/stm32mp1/include/boot_api.h``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ...crypto import ecdsa_der, ecdsa_raw
from ...errors import InputError, UsageError, VerificationError
from ...raw_ec import RawECPublicKey

MAGIC = b"STM\x32"
V1_HEADER_SIZE = 0x100
V2_BASE_SIZE = 0x80
# TF-A's stm32image and the MP13 ROM/BL2 expect header + extensions to total 512 bytes.
V2_TOTAL_SIZE = 0x200

HEADER_V1 = 0x00010000
HEADER_V20 = 0x00020000
HEADER_V22 = 0x00020200
SUPPORTED_VERSIONS = {HEADER_V1: "1.0", HEADER_V20: "2.0", HEADER_V22: "2.2"}

ALGO_P256 = 1
ALGO_BRAINPOOL256 = 2  # brainpoolP256t1 (TF-A stm32mp_crypto_lib.c: OID_EC_GRP_BP256T1)
BRAINPOOL_CURVE = "brainpoolP256t1"

# v1 option_flags bit0: "do not check the signature".
V1_OPTION_NO_SIGNATURE = 1 << 0
# v2 extension_flags.
EXT_FLAG_AUTH = 1 << 0
EXT_FLAG_DECRYPT = 1 << 1
EXT_FLAG_PADDING = 1 << 31
EXT_TYPE_AUTH = 0x02005453  # bytes 'S','T',0x00,0x02
EXT_TYPE_DECRYPT = 0x01005453
EXT_TYPE_PADDING = 0xFFFF5453
EXT_HEADER_SIZE = 8
MAX_PK_TABLE = 8

SIGNED_FROM = 72  # first byte of header_version
SIGNATURE_SLICE = slice(4, 68)
CHECKSUM_OFFSET = 68

OTP_PKH_FIRST_WORD = 24  # STM32MP15x and STM32MP13x: OTP words 24..31


@dataclass
class Stm32Image:
    """A parsed STM32 image. ``header`` is the full header (v2: base + extensions)."""

    header_version: int
    header: bytearray
    payload: bytes
    trailer: bytes
    extensions: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def major(self) -> int:
        return self.header_version >> 16

    @property
    def version_name(self) -> str:
        return SUPPORTED_VERSIONS[self.header_version]

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.header, offset)[0]

    def set_u32(self, offset: int, value: int) -> None:
        struct.pack_into("<I", self.header, offset, value)

    @property
    def image_entry_point(self) -> int:
        return self.u32(80)

    @property
    def load_address(self) -> int:
        return self.u32(88)

    @property
    def image_version(self) -> int:
        return self.u32(96)

    @property
    def binary_type(self) -> int:
        return self.header[255] if self.major == 1 else self.u32(108)

    def to_bytes(self) -> bytes:
        return bytes(self.header) + self.payload + self.trailer

    def signed_range(self) -> bytes:
        return bytes(self.header[SIGNED_FROM:]) + self.payload


def payload_checksum(payload: bytes) -> int:
    """Sum of the payload bytes modulo 2**32, as the ROM computes it."""
    return sum(payload) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Parsing


def parse(data: bytes) -> Stm32Image:
    """Parse and check an STM32 image; raise InputError naming the first problem."""
    if len(data) < V2_BASE_SIZE:
        raise InputError(f"not an STM32 image: {len(data)} bytes is shorter than any STM32 header")
    if data[:4] != MAGIC:
        raise InputError(f"not an STM32 image: bad magic {data[:4].hex()} (expected 53544d32 'STM2')")
    version = struct.unpack_from("<I", data, 72)[0]
    if version not in SUPPORTED_VERSIONS:
        if version >> 16 == 2 and (version >> 8) & 0xFF == 3:
            raise InputError("STM32 header v2.3 (STM32MP21/N6, P-384 layout) is not supported")
        raise InputError(f"unsupported STM32 header version 0x{version:08x} (supported: 1.0, 2.0, 2.2)")
    image_length = struct.unpack_from("<I", data, 76)[0]
    if version == HEADER_V1:
        header_size = V1_HEADER_SIZE
        if len(data) < header_size:
            raise InputError(f"truncated STM32 image: {len(data)} bytes, header v1 needs {header_size}")
        _check_zero(data, 84, 4, "reserved1")
        _check_zero(data, 92, 4, "reserved2")
        _check_zero(data, 172, 83, "header padding")
        extensions: list[tuple[int, bytes]] = []
    else:
        ext_len = struct.unpack_from("<I", data, 104)[0]
        header_size = V2_BASE_SIZE + ext_len
        if ext_len > 0x10000:
            raise InputError(f"STM32 extension_headers_length 0x{ext_len:x} is implausible")
        if len(data) < header_size:
            raise InputError(
                f"truncated STM32 image: {len(data)} bytes, header v2 with extensions needs {header_size}"
            )
        _check_zero(data, 112, 16, "header padding")
        extensions = _parse_extensions(data[V2_BASE_SIZE:header_size])
    end = header_size + image_length
    if len(data) < end:
        raise InputError(
            f"truncated STM32 image: image_length says {image_length} payload bytes, "
            f"file has {len(data) - header_size}"
        )
    return Stm32Image(
        header_version=version,
        header=bytearray(data[:header_size]),
        payload=bytes(data[header_size:end]),
        trailer=bytes(data[end:]),
        extensions=extensions,
    )


def _check_zero(data: bytes, offset: int, size: int, name: str) -> None:
    if any(data[offset : offset + size]):
        raise InputError(f"STM32 header field {name} (offset {offset}) must be zero")


def _parse_extensions(area: bytes) -> list[tuple[int, bytes]]:
    exts = []
    pos = 0
    while pos < len(area):
        if len(area) - pos < EXT_HEADER_SIZE:
            raise InputError(f"STM32 extension header at offset {V2_BASE_SIZE + pos} is truncated")
        ext_type, ext_len = struct.unpack_from("<II", area, pos)
        if ext_len < EXT_HEADER_SIZE or pos + ext_len > len(area):
            raise InputError(
                f"STM32 extension header at offset {V2_BASE_SIZE + pos} has bad length {ext_len}"
            )
        exts.append((ext_type, bytes(area[pos + EXT_HEADER_SIZE : pos + ext_len])))
        pos += ext_len
    return exts


# ---------------------------------------------------------------------------------------------
# Creating an unsigned header (raw binary input)


def create(
    payload: bytes,
    *,
    header_version: int = HEADER_V1,
    entry_point: int,
    load_address: int = 0,
    binary_type: int = 0x10,
    image_version: int = 0,
) -> bytes:
    """Wrap ``payload`` in an unsigned header as TF-A's stm32image writes it."""
    if header_version not in SUPPORTED_VERSIONS:
        raise UsageError(f"unsupported STM32 header version 0x{header_version:08x}")
    for name, value, limit in (
        ("entry point", entry_point, 0xFFFFFFFF),
        ("load address", load_address, 0xFFFFFFFF),
        ("image version", image_version, 0xFFFFFFFF),
        ("binary type", binary_type, 0xFF),
    ):
        if not 0 <= value <= limit:
            raise UsageError(f"{name} {value:#x} out of range")
    if len(payload) > 0xFFFFFFFF:
        raise InputError("payload larger than 4 GiB")
    if header_version == HEADER_V1:
        hdr = bytearray(V1_HEADER_SIZE)
        struct.pack_into("<I", hdr, 100, V1_OPTION_NO_SIGNATURE)
        struct.pack_into("<I", hdr, 104, ALGO_P256)
        hdr[255] = binary_type
    else:
        hdr = bytearray(V2_TOTAL_SIZE)
        pad_len = V2_TOTAL_SIZE - V2_BASE_SIZE
        struct.pack_into("<III", hdr, 100, EXT_FLAG_PADDING, pad_len, binary_type)
        struct.pack_into("<II", hdr, V2_BASE_SIZE, EXT_TYPE_PADDING, pad_len)
    hdr[0:4] = MAGIC
    struct.pack_into("<I", hdr, CHECKSUM_OFFSET, payload_checksum(payload))
    struct.pack_into("<IIIIII", hdr, 72, header_version, len(payload), entry_point, 0, load_address, 0)
    struct.pack_into("<I", hdr, 96, image_version)
    return bytes(hdr) + payload


# ---------------------------------------------------------------------------------------------
# Keys and key hashes


def public_key_xy(public_key) -> tuple[int, bytes]:
    """Return (ecc_algo_type, raw X||Y) for a public key the STM32 ROM can use."""
    if isinstance(public_key, RawECPublicKey):
        if public_key.curve_name != BRAINPOOL_CURVE:
            raise UsageError(f"STM32 signing needs an ECDSA P-256 or {BRAINPOOL_CURVE} key, "
                             f"got curve {public_key.curve_name}")
        return ALGO_BRAINPOOL256, public_key.xy
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise UsageError(f"STM32 signing needs an EC key (ECDSA P-256 or {BRAINPOOL_CURVE}); got a non-EC key")
    curve = public_key.curve.name
    if curve != "secp256r1":
        if curve == "brainpoolP256r1":
            raise UsageError(
                "brainpoolP256r1 is not the STM32 'Brainpool 256' curve (the ROM uses brainpoolP256t1); "
                "use a P-256 key or a bp256t1 token key"
            )
        raise UsageError(f"STM32 signing needs an ECDSA P-256 or {BRAINPOOL_CURVE} key, got curve {curve}")
    point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return ALGO_P256, point[1:]


def public_key_from_xy(algo: int, xy: bytes) -> ec.EllipticCurvePublicKey | RawECPublicKey:
    if algo == ALGO_BRAINPOOL256:
        # Not checked here: OpenSSL refuses a point off the curve when it verifies the signature.
        return RawECPublicKey.from_xy(BRAINPOOL_CURVE, xy)
    if algo != ALGO_P256:
        raise InputError(f"unknown STM32 ecdsa algorithm {algo}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError:
        raise VerificationError("public key in the STM32 header is not a valid P-256 point") from None


def pkh_v1(public_key) -> bytes:
    """STM32MP15 PKH: SHA-256 over raw X||Y (no 0x04 prefix, no encoding)."""
    _, xy = public_key_xy(public_key)
    return hashlib.sha256(xy).digest()


def pk_table_entry(public_key) -> bytes:
    """STM32MP13/MP2 PKH table entry: SHA-256(ecc_algo_type as LE u32 || X || Y)."""
    algo, xy = public_key_xy(public_key)
    return hashlib.sha256(struct.pack("<I", algo) + xy).digest()


def pkhth(public_keys) -> bytes:
    """STM32MP13/MP2 PKHTH: SHA-256 over the concatenated table entries (the value in OTP)."""
    keys = list(public_keys)
    if not 1 <= len(keys) <= MAX_PK_TABLE:
        raise UsageError(f"the STM32 public-key table holds 1 to {MAX_PK_TABLE} keys, got {len(keys)}")
    return hashlib.sha256(b"".join(pk_table_entry(k) for k in keys)).digest()


def otp_words(digest: bytes) -> list[int]:
    """The eight 32-bit OTP values: word i is the big-endian read of digest[4i:4i+4].

    This is what U-Boot's ``stm32key`` fuses from a 32-byte hash file and what TF-A byte-swaps
    back when comparing (``copy_hash_from_otp``).
    """
    if len(digest) != 32:
        raise UsageError("an STM32 PKH is 32 bytes")
    return list(struct.unpack(">8I", digest))


# ---------------------------------------------------------------------------------------------
# Signing


def sign(
    data: bytes,
    key,
    *,
    image_version: int | None = None,
    table_keys=None,
) -> bytes:
    """Sign an STM32 image; return the signed file (trailing padding kept, not signed).

    ``key`` is a cryptography EC private key (or a token-backed subclass). For header v2,
    ``table_keys`` is the ordered list of public keys in the PKH table (default: the signing key
    alone); the signing key must be one of them, its position becomes ``pk_idx``.
    """
    image = parse(data)
    public_key = key.public_key()
    algo, xy = public_key_xy(public_key)
    if image_version is not None:
        if not 0 <= image_version <= 0xFFFFFFFF:
            raise UsageError(f"image version {image_version} out of range")
        image.set_u32(96, image_version)
    if image.major == 1:
        if table_keys:
            raise UsageError("a public-key table is only used with header v2 (STM32MP13/MP2)")
        image.set_u32(100, image.u32(100) & ~V1_OPTION_NO_SIGNATURE)
        image.set_u32(104, algo)
        image.header[108:172] = xy
    else:
        _set_v2_auth_extension(image, public_key, algo, xy, table_keys)
    image.set_u32(CHECKSUM_OFFSET, payload_checksum(image.payload))

    digest = hashlib.sha256(image.signed_range()).digest()
    if algo == ALGO_BRAINPOOL256:
        if not hasattr(key, "sign_digest"):
            raise UsageError(f"a {BRAINPOOL_CURVE} signing key must be a token key")
        raw = key.sign_digest(digest)
    else:
        der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        raw = ecdsa_raw(der, 32)  # fixed 32-byte halves, as the ROM reads them
    # Check what will be written: the raw r||s as the ROM will read it.
    if not _signature_verifies(public_key, raw, digest):
        raise VerificationError("the signature returned by the key does not verify")
    image.header[SIGNATURE_SLICE] = raw
    return image.to_bytes()


def _signature_verifies(public_key, raw: bytes, digest: bytes) -> bool:
    if isinstance(public_key, RawECPublicKey):
        try:
            public_key.verify_digest(raw, digest)
        except VerificationError:
            return False
        return True
    try:
        public_key.verify(ecdsa_der(raw), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return False
    return True


def _set_v2_auth_extension(image: Stm32Image, public_key, algo: int, xy: bytes, table_keys) -> None:
    for ext_type, _ in image.extensions:
        if ext_type == EXT_TYPE_DECRYPT:
            raise InputError("STM32 images with the FSBL decryption extension are not supported")
        if ext_type not in (EXT_TYPE_AUTH, EXT_TYPE_PADDING):
            raise InputError(f"unknown STM32 extension header type 0x{ext_type:08x}")
    if image.u32(100) & EXT_FLAG_DECRYPT:
        raise InputError("STM32 images with the FSBL decryption extension are not supported")

    table = list(table_keys) if table_keys else [public_key]
    entries = [pk_table_entry(k) for k in table]
    if not 1 <= len(entries) <= MAX_PK_TABLE:
        raise UsageError(f"the STM32 public-key table holds 1 to {MAX_PK_TABLE} keys, got {len(entries)}")
    own = hashlib.sha256(struct.pack("<I", algo) + xy).digest()
    if own not in entries:
        raise UsageError("the signing key is not in the public-key table")
    pk_idx = entries.index(own)

    params = struct.pack("<III", pk_idx, len(entries), algo) + xy + b"".join(entries)
    auth = struct.pack("<II", EXT_TYPE_AUTH, EXT_HEADER_SIZE + len(params)) + params

    # The authentication extension goes first: TF-A's MP13 get_rotpk_hash reads the first
    # extension header as it (stm32mp_trusted_boot.c). Keep the extension area (and so the total
    # header size) as it was by shrinking the padding extension behind it.
    area = len(image.header) - V2_BASE_SIZE
    rest = area - len(auth)
    flags = EXT_FLAG_AUTH
    if rest == 0:
        ext_area = auth
    elif rest >= EXT_HEADER_SIZE:
        ext_area = auth + struct.pack("<II", EXT_TYPE_PADDING, rest) + bytes(rest - EXT_HEADER_SIZE)
        flags |= EXT_FLAG_PADDING
    else:
        raise InputError(
            f"STM32 extension area of {area} bytes is too small for an authentication extension "
            f"of {len(auth)} bytes"
        )
    image.set_u32(100, flags)
    image.set_u32(104, area)
    image.header[V2_BASE_SIZE:] = ext_area
    image.extensions = _parse_extensions(ext_area)


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class Verified:
    header_version: str
    public_key: ec.EllipticCurvePublicKey | RawECPublicKey
    algo: int
    pkh: bytes  # v1: PKH; v2: PKHTH (the value in OTP)
    pk_index: int | None
    pk_hashes: list[bytes]
    image_version: int
    image_length: int
    entry_point: int
    binary_type: int


def verify(data: bytes, *, expected_pkh: bytes | None = None) -> Verified:
    """Check a signed image: checksum, key/table consistency, signature, optional PKH/PKHTH."""
    image = parse(data)
    checksum = payload_checksum(image.payload)
    if image.u32(CHECKSUM_OFFSET) != checksum:
        raise VerificationError(
            f"STM32 checksum 0x{image.u32(CHECKSUM_OFFSET):08x} does not match the payload (0x{checksum:08x})"
        )
    pk_index = None
    table: list[bytes] = []
    if image.major == 1:
        if image.u32(100) & V1_OPTION_NO_SIGNATURE:
            raise VerificationError("image is not signed (option_flags bit0 'no signature check' is set)")
        algo = image.u32(104)
        xy = bytes(image.header[108:172])
        public_key = public_key_from_xy(algo, xy)
        pkh = hashlib.sha256(xy).digest()
    else:
        flags = image.u32(100)
        if not flags & EXT_FLAG_AUTH:
            raise VerificationError("image is not signed (extension_flags bit0 'authentication' is clear)")
        auth = [p for t, p in image.extensions if t == EXT_TYPE_AUTH]
        if len(auth) != 1:
            raise VerificationError(f"expected one authentication extension, found {len(auth)}")
        params = auth[0]
        if len(params) < 12 + 64:
            raise InputError("STM32 authentication extension is truncated")
        pk_index, nb_pk, algo = struct.unpack_from("<III", params, 0)
        if not 1 <= nb_pk <= MAX_PK_TABLE or len(params) < 76 + 32 * nb_pk:
            raise InputError(f"STM32 authentication extension has a bad key count {nb_pk}")
        if pk_index >= nb_pk:
            raise VerificationError(f"pk_idx {pk_index} is outside the table of {nb_pk} keys")
        xy = params[12:76]
        table = [params[76 + 32 * i : 108 + 32 * i] for i in range(nb_pk)]
        public_key = public_key_from_xy(algo, xy)
        if hashlib.sha256(struct.pack("<I", algo) + xy).digest() != table[pk_index]:
            raise VerificationError(f"the header public key does not match table entry {pk_index}")
        pkh = hashlib.sha256(b"".join(table)).digest()
    digest = hashlib.sha256(image.signed_range()).digest()
    raw = bytes(image.header[SIGNATURE_SLICE])
    if not _signature_verifies(public_key, raw, digest):
        raise VerificationError("STM32 signature does not verify")
    if expected_pkh is not None and expected_pkh != pkh:
        kind = "PKH" if image.major == 1 else "PKHTH"
        raise VerificationError(f"image {kind} {pkh.hex()} does not match the expected {expected_pkh.hex()}")
    return Verified(
        header_version=image.version_name,
        public_key=public_key,
        algo=algo,
        pkh=pkh,
        pk_index=pk_index,
        pk_hashes=table,
        image_version=image.image_version,
        image_length=len(image.payload),
        entry_point=image.image_entry_point,
        binary_type=image.binary_type,
    )
