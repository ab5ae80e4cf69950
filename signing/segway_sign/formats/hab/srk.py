"""HABv4 Super Root Key table and the SRK_HASH fuses (i.MX 6/7/8M).

The table is what the ROM hashes and compares with the SRK_HASH fuses; its bytes match NXP's
``srktool -h 4`` (and ``-h 4.5`` for ECDSA keys on HAB 4.5). All HAB integers are big-endian.
Layout: CST ``src/lib/common/srk_helper.c`` and ``hab_srktool_scripts/createSRKTable``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ...errors import InputError, UsageError

TAG_TABLE = 0xD7  # HAB_TAG_CRT: the table is wrapped like a certificate blob
TAG_PUBKEY = 0xE1  # HAB_KEY_PUBLIC
ALG_RSA = 0x21  # HAB_ALG_PKCS1
ALG_ECDSA = 0x27  # HAB_ALG_ECDSA
FLAG_CA = 0x80  # HAB_KEY_FLG_CA: the key may verify certificates (CSFK/IMG) rather than data
TABLE_VERSION = 0x40  # srktool writes 0x40 for HAB 4.x tables, also with -h 4.5
MAX_KEYS = 4

# HAB curve identifiers (HAB4 API RM "ECDSA curves"); size field = key size in bits.
_CURVES = {"secp256r1": (0x4B, 256), "secp384r1": (0x4C, 384), "secp521r1": (0x4D, 521)}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _unsigned_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def srk_entry(public_key: PublicKey, ca: bool = True) -> bytes:
    """One public-key record of the SRK table (without the table header)."""
    flags = FLAG_CA if ca else 0
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        modulus, exponent = _unsigned_bytes(numbers.n), _unsigned_bytes(numbers.e)
        body = struct.pack(">3xBHH", flags, len(modulus), len(exponent)) + modulus + exponent
        return struct.pack(">BHB", TAG_PUBKEY, 4 + len(body), ALG_RSA) + body
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(public_key.curve.name)
        if curve is None:
            raise InputError(f"HAB cannot use EC curve {public_key.curve.name} (P-256, P-384, P-521 only)")
        curve_id, bits = curve
        size = (bits + 7) // 8
        numbers = public_key.public_numbers()
        point = numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")
        body = struct.pack(">3xBBxH", flags, curve_id, bits) + point
        return struct.pack(">BHB", TAG_PUBKEY, 4 + len(body), ALG_ECDSA) + body
    raise InputError(f"HAB SRKs must be RSA or EC keys, not {type(public_key).__name__}")


def srk_table(public_keys: Sequence[PublicKey], ca: bool = True) -> bytes:
    """The SRK table (``SRK_1_2_3_4_table.bin``) for 1–4 keys, in fuse order."""
    if not 1 <= len(public_keys) <= MAX_KEYS:
        raise UsageError(f"an SRK table holds 1 to {MAX_KEYS} keys, got {len(public_keys)}")
    entries = b"".join(srk_entry(k, ca) for k in public_keys)
    return struct.pack(">BHB", TAG_TABLE, 4 + len(entries), TABLE_VERSION) + entries


@dataclass(frozen=True)
class SrkEntry:
    offset: int  # from the table start
    raw: bytes
    alg: int
    ca: bool


def parse_srk_table(table: bytes) -> list[SrkEntry]:
    """Split a table into its records; raise InputError if it is not a HABv4 SRK table."""
    if len(table) < 4 or table[0] != TAG_TABLE:
        raise InputError("not a HABv4 SRK table (tag 0xD7 missing)")
    (length,) = struct.unpack_from(">H", table, 1)
    if length != len(table):
        raise InputError(f"SRK table length field {length} does not match the file size {len(table)}")
    entries, offset = [], 4
    while offset < length:
        if offset + 8 > length or table[offset] != TAG_PUBKEY:
            raise InputError(f"SRK table: bad key record at offset {offset}")
        (rec_len,) = struct.unpack_from(">H", table, offset + 1)
        if rec_len < 12 or offset + rec_len > length:
            raise InputError(f"SRK table: key record at offset {offset} overruns the table")
        raw = table[offset : offset + rec_len]
        entries.append(SrkEntry(offset, raw, raw[3], bool(raw[7] & FLAG_CA)))
        offset += rec_len
    if not 1 <= len(entries) <= MAX_KEYS:
        raise InputError(f"SRK table holds {len(entries)} keys (1 to {MAX_KEYS} expected)")
    return entries


def entry_public_key(raw: bytes) -> PublicKey:
    """The public key held by one SRK record (to check certificates against it)."""
    alg = raw[3]
    if alg == ALG_RSA:
        mod_len, exp_len = struct.unpack_from(">HH", raw, 8)
        if 12 + mod_len + exp_len != len(raw):
            raise InputError("SRK record: RSA lengths do not add up")
        n = int.from_bytes(raw[12 : 12 + mod_len], "big")
        e = int.from_bytes(raw[12 + mod_len :], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if alg == ALG_ECDSA:
        curve_id = raw[8]
        names = {cid: name for name, (cid, _) in _CURVES.items()}
        curve = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}.get(
            names.get(curve_id, ""))
        if curve is None:
            raise InputError(f"SRK record: unknown curve 0x{curve_id:02x}")
        point = raw[12:]
        half = len(point) // 2
        try:
            return ec.EllipticCurvePublicNumbers(int.from_bytes(point[:half], "big"),
                                                 int.from_bytes(point[half:], "big"), curve()).public_key()
        except ValueError:
            raise InputError("SRK record: EC point is not on the curve") from None
    raise InputError(f"SRK record: unknown algorithm 0x{alg:02x}")


def srk_hash(table: bytes) -> bytes:
    """SRK_HASH = SHA-256 over the concatenated SHA-256 of each record (table header excluded)."""
    digests = b"".join(hashlib.sha256(e.raw).digest() for e in parse_srk_table(table))
    return hashlib.sha256(digests).digest()


def fuse_file(digest: bytes, fuse_format: int = 1) -> bytes:
    """``SRK_fuse.bin`` as srktool writes it: format 1 = the 32 hash bytes; format 0 = one byte per
    32-bit big-endian word (8 fuses per word)."""
    if fuse_format == 1:
        return bytes(digest)
    if fuse_format == 0:
        return b"".join(struct.pack(">I", b) for b in digest)
    raise UsageError("fuse format must be 0 or 1")


def fuse_file_digest(data: bytes) -> bytes:
    """SRK_HASH from a fuse file as ``fuse_file`` and srktool write it (format 1: 32 bytes; format 0:
    128 bytes, one hash byte in the low byte of each big-endian word)."""
    if len(data) == 32:
        return bytes(data)
    if len(data) == 128:
        words = struct.unpack(">32I", data)
        if all(w <= 0xFF for w in words):
            return bytes(words)
    raise InputError(f"not an SRK fuse file ({len(data)} bytes; srktool writes 32 bytes with -f 1, 128 with -f 0)")


def hash_fuse_words(digest: bytes) -> list[int]:
    """The eight 32-bit values to burn, in fuse order: little-endian words of SRK_HASH (as U-Boot's
    documentation reads them from ``SRK_fuse.bin`` with ``hexdump -e '/4 "0x"' -e '/4 "%X""\\n"'``)."""
    if len(digest) != 32:
        raise InputError("SRK_HASH must be 32 bytes")
    return list(struct.unpack("<8I", digest))


def srk_fuse_words(public_keys: Sequence[PublicKey], ca: bool = True) -> list[int]:
    """Fuse words for an SRK set, straight from the public keys (for the key ceremony)."""
    return hash_fuse_words(srk_hash(srk_table(public_keys, ca)))


# Where SRK_HASH lives in U-Boot's `fuse` numbering (bank, first word), per SoC family.
# i.MX6: OCOTP bank 3 words 0-7; i.MX7 and i.MX8M: bank 6 words 0-3, then bank 7 words 0-3.
FUSE_LAYOUTS = {"imx6": ((3, 0, 8),), "imx7": ((6, 0, 4), (7, 0, 4)), "imx8m": ((6, 0, 4), (7, 0, 4))}


def fuse_prog_lines(words: Sequence[int], soc: str) -> list[str]:
    """U-Boot ``fuse prog -y`` commands that burn SRK_HASH (irreversible)."""
    layout = FUSE_LAYOUTS.get(soc)
    if layout is None:
        raise UsageError(f"unknown SoC family {soc!r} (one of {', '.join(FUSE_LAYOUTS)})")
    lines, i = [], 0
    for bank, first, count in layout:
        for w in range(first, first + count):
            lines.append(f"fuse prog -y {bank} {w} 0x{words[i]:08X}")
            i += 1
    return lines
