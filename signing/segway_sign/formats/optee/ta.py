"""OP-TEE Trusted Applications: parse, sign and verify the signed header (``shdr``).

A signed TA, as upstream's ``scripts/sign_encrypt.py`` writes it and OP-TEE 4.x's REE-FS TA loader
(``core/kernel/ree_fs_ta.c``, ``core/crypto/signed_hdr.c``) reads it, all fields little-endian::

    struct shdr             magic 0x4f545348, img_type, img_size, algo (u32), hash_size, sig_size (u16)
    hash[hash_size]         SHA-256 over: struct shdr, [struct shdr_bootstrap_ta], the payload
    sig[sig_size]           RSA signature of ``hash`` by the TA key (TA_PUBLIC_KEY in tee.bin)
    struct shdr_bootstrap_ta  uuid (16 octets, RFC 4122 order), ta_version (u32)   [img_type 1]
    payload[img_size]       the stripped TA ELF; the file ends here

The loader accepts img_type 0 (legacy: no bootstrap header) and 1 (bootstrap; sign_encrypt.py
makes only these), encrypted TAs (2) and subkey chains (3). segway-sign signs img_type 1, verifies 0
and 1, and refuses 2 and 3 (not supported: nothing of them is checked). Signatures are RSASSA
PKCS#1 v1.5 or PSS (MGF1, salt length = hash length, as the loader passes it) with SHA-256; the
loader wants an RSA key of at least 2048 bits and a signature exactly the modulus' length.

Signing computes the hash here and has only the hash signed (``Prehashed``), so the key may be a
token key (``hsm``): the token never sees the TA.
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuidlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ...errors import InputError, UsageError, VerificationError

SHDR_MAGIC = 0x4F545348
SHDR = struct.Struct("<IIIIHH")  # struct shdr (20 bytes)
BOOTSTRAP = struct.Struct("<16sI")  # struct shdr_bootstrap_ta (20 bytes)

SHDR_TA, SHDR_BOOTSTRAP_TA, SHDR_ENCRYPTED_TA, SHDR_SUBKEY = 0, 1, 2, 3
IMG_TYPES = {SHDR_TA: "SHDR_TA", SHDR_BOOTSTRAP_TA: "SHDR_BOOTSTRAP_TA",
             SHDR_ENCRYPTED_TA: "SHDR_ENCRYPTED_TA", SHDR_SUBKEY: "SHDR_SUBKEY"}

# The algorithms segway-sign signs and verifies (the two sign_encrypt.py offers), by CLI name.
ALGO_PKCS1 = 0x70004830  # TEE_ALG_RSASSA_PKCS1_V1_5_SHA256
ALGO_PSS = 0x70414930  # TEE_ALG_RSASSA_PKCS1_PSS_MGF1_SHA256
ALGOS = {"pkcs1": ALGO_PKCS1, "pss": ALGO_PSS}
ALGO_NAMES = {ALGO_PKCS1: "TEE_ALG_RSASSA_PKCS1_V1_5_SHA256", ALGO_PSS: "TEE_ALG_RSASSA_PKCS1_PSS_MGF1_SHA256"}
HASH_SIZE = 32
MIN_KEY_BITS = 2048  # signed_hdr.c: is_weak_key_size()

ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class TrustedApp:
    """A parsed signed TA. ``payload`` is the ELF the loader hashes and maps."""

    img_type: int
    algo: int
    hash_size: int
    sig_size: int
    digest: bytes
    signature: bytes
    uuid: uuidlib.UUID | None  # None for a legacy (img_type 0) TA
    ta_version: int | None
    payload: bytes
    header: bytes  # struct shdr as stored

    @property
    def img_type_name(self) -> str:
        return IMG_TYPES.get(self.img_type, f"unknown ({self.img_type})")

    @property
    def algo_name(self) -> str:
        return ALGO_NAMES.get(self.algo, f"0x{self.algo:08x}")

    @property
    def signed_part(self) -> bytes:
        """What ``digest`` is the SHA-256 of: the header fields and the payload."""
        bootstrap = b"" if self.uuid is None else BOOTSTRAP.pack(self.uuid.bytes, self.ta_version)
        return self.header + bootstrap + self.payload


@dataclass(frozen=True)
class Verified:
    """What ``verify`` checked."""

    ta: TrustedApp
    key_bits: int


def _padding(algo: int) -> padding.AsymmetricPadding:
    if algo == ALGO_PSS:
        # ree_fs_ta.c -> crypto_acipher_rsassa_verify(..., salt_len = hash_size, ...)
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=HASH_SIZE)
    return padding.PKCS1v15()


def check_ta_key(public_key) -> None:
    """The key must be one OP-TEE can hold as TA_PUBLIC_KEY and check TAs with."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise UsageError("OP-TEE checks TAs with an RSA key (TA_PUBLIC_KEY); this key is not RSA")
    if public_key.key_size < MIN_KEY_BITS:
        raise UsageError(f"OP-TEE refuses TA keys under {MIN_KEY_BITS} bits; this one has {public_key.key_size}")
    if public_key.key_size % 8:
        # pem_to_pub_c.py stores key_size >> 3 modulus bytes
        raise UsageError(f"OP-TEE's build stores whole modulus bytes; a {public_key.key_size}-bit key does not fit")
    if public_key.public_numbers().e > 0xFFFFFFFF:
        raise UsageError("OP-TEE takes public exponents of at most 32 bits (pem_to_pub_c.py)")


def _algo(name: str) -> int:
    try:
        return ALGOS[name]
    except KeyError:
        raise UsageError(f"algorithm {name!r} is not one of {', '.join(ALGOS)}") from None


def _uuid_octets(raw: bytes) -> uuidlib.UUID:
    return uuidlib.UUID(bytes=bytes(raw))


def parse(data: bytes) -> TrustedApp:
    """The signed TA's structure, checked as the loader checks it before reading the payload (sizes,
    magic, types, the file ending exactly after the payload); signatures are ``verify``'s business."""
    data = bytes(data)
    if len(data) < SHDR.size:
        raise InputError(f"not an OP-TEE TA: {len(data)} bytes, shorter than the {SHDR.size}-byte signed header")
    magic, img_type, img_size, algo, hash_size, sig_size = SHDR.unpack_from(data)
    if magic != SHDR_MAGIC:
        raise InputError(f"not an OP-TEE TA: magic 0x{magic:08x}, expected 0x{SHDR_MAGIC:08x}")
    if img_type == SHDR_ENCRYPTED_TA:
        raise InputError("encrypted TA (SHDR_ENCRYPTED_TA): not supported by segway-sign; nothing of it was checked")
    if img_type == SHDR_SUBKEY:
        raise InputError("TA signed through a subkey chain (SHDR_SUBKEY): not supported by segway-sign; "
                         "nothing of it was checked")
    if img_type not in (SHDR_TA, SHDR_BOOTSTRAP_TA):
        raise InputError(f"unknown TA image type {img_type} (OP-TEE loads 0 to 3)")
    if algo not in ALGO_NAMES:
        raise InputError(f"signature algorithm 0x{algo:08x} is not one segway-sign checks "
                         f"({', '.join(f'0x{a:08x}' for a in ALGO_NAMES)})")
    if hash_size != HASH_SIZE:
        raise InputError(f"hash_size {hash_size} does not match SHA-256 ({HASH_SIZE}); OP-TEE refuses it")
    offs = SHDR.size + hash_size + sig_size
    if offs > len(data):
        raise InputError(f"truncated TA: the signed header needs {offs} bytes, the file has {len(data)}")
    digest = data[SHDR.size:SHDR.size + hash_size]
    signature = data[SHDR.size + hash_size:offs]
    ta_uuid, version = None, None
    if img_type == SHDR_BOOTSTRAP_TA:
        if offs + BOOTSTRAP.size > len(data):
            raise InputError(f"truncated TA: no room for the bootstrap header (uuid, ta_version) at {offs}")
        raw_uuid, version = BOOTSTRAP.unpack_from(data, offs)
        ta_uuid = _uuid_octets(raw_uuid)
        offs += BOOTSTRAP.size
    if len(data) != offs + img_size:
        what = "truncated" if len(data) < offs + img_size else "trailing bytes after the payload"
        raise InputError(f"{what}: img_size says {img_size} payload bytes at offset {offs}, the file has "
                         f"{len(data) - offs}; OP-TEE refuses a size mismatch")
    return TrustedApp(img_type, algo, hash_size, sig_size, digest, signature, ta_uuid, version,
                      data[offs:], data[:SHDR.size])


def verify(data: bytes, public_key, expected_uuid: uuidlib.UUID | None = None) -> Verified:
    """Check a signed TA as OP-TEE's loader does: structure and sizes (``parse``), the key's size
    against sig_size, the signature over the header's hash, the hash against the header fields and
    payload, and (given) the UUID the TA is loaded as. Raises InputError/VerificationError."""
    ta = parse(data)
    check_ta_key(public_key)
    modulus_bytes = (public_key.key_size + 7) // 8
    if ta.sig_size != modulus_bytes:
        raise VerificationError(f"sig_size {ta.sig_size} does not match the {public_key.key_size}-bit key "
                                f"({modulus_bytes} bytes): signed by another key")
    try:
        public_key.verify(ta.signature, ta.digest, _padding(ta.algo), Prehashed(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(f"the signature ({ta.algo_name}) does not verify with the given key") from None
    if hashlib.sha256(ta.signed_part).digest() != ta.digest:
        raise VerificationError("the signed hash does not match the TA's header fields and payload")
    if expected_uuid is not None:
        if ta.uuid is None:
            raise VerificationError(f"legacy TA (no bootstrap header): its UUID is not signed, expected {expected_uuid}")
        if ta.uuid != expected_uuid:
            raise VerificationError(f"the TA is signed as {ta.uuid}, expected {expected_uuid}")
    return Verified(ta, public_key.key_size)


def unsigned_input(data: bytes) -> tuple[bytes, uuidlib.UUID | None, int | None]:
    """What to sign from an input: a stripped TA ELF as is, or the payload, UUID and version of an
    already signed TA (re-signing; its old signature is not checked). (payload, uuid, version)."""
    data = bytes(data)
    if data[:4] == struct.pack("<I", SHDR_MAGIC):
        ta = parse(data)
        return ta.payload, ta.uuid, ta.ta_version
    if data[:4] != ELF_MAGIC:
        raise InputError("input is neither an ELF file (a stripped TA) nor a signed OP-TEE TA")
    return data, None, None


def ta_head_uuid(elf: bytes) -> uuidlib.UUID | None:
    """The UUID in the ELF's ``.ta_head`` section (struct ta_head: a TEE_UUID in the ELF's byte
    order), or None when there is no such section or the ELF cannot be read that far."""
    try:
        ei_class, ei_data = elf[4], elf[5]
        end = {1: "<", 2: ">"}[ei_data]
        if ei_class == 2:
            shoff, = struct.unpack_from(end + "Q", elf, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x3A)
            entry = struct.Struct(end + "IIQQQQIIQQ")
        elif ei_class == 1:
            shoff, = struct.unpack_from(end + "I", elf, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x2E)
            entry = struct.Struct(end + "IIIIIIIIII")
        else:
            return None
        if shoff == 0 or shnum == 0 or shentsize < entry.size or shnum > 4096:
            return None
        sections = [entry.unpack_from(elf, shoff + i * shentsize) for i in range(shnum)]
        strtab = sections[shstrndx]
        for sec in sections:
            name_off = strtab[4] + sec[0]
            name = elf[name_off:elf.index(b"\0", name_off)]
            if name == b".ta_head" and sec[5] >= 16:
                raw = elf[sec[4]:sec[4] + 16]
                if len(raw) != 16:
                    return None
                if end == "<":
                    return uuidlib.UUID(bytes_le=raw)
                return uuidlib.UUID(bytes=raw)
    except (IndexError, KeyError, ValueError, struct.error):
        return None
    return None


def signed_header(payload: bytes, ta_uuid: uuidlib.UUID, ta_version: int, algo: int,
                  sig_size: int) -> tuple[bytes, bytes]:
    """(struct shdr + struct shdr_bootstrap_ta, the SHA-256 to sign), as sign_encrypt.py digests."""
    if not 0 <= ta_version <= 0xFFFFFFFF:
        raise UsageError(f"ta_version {ta_version} is not a 32-bit unsigned number")
    if len(payload) > 0xFFFFFFFF:
        raise InputError("the TA is larger than img_size can say (4 GiB)")
    shdr = SHDR.pack(SHDR_MAGIC, SHDR_BOOTSTRAP_TA, len(payload), algo, HASH_SIZE, sig_size)
    bootstrap = BOOTSTRAP.pack(ta_uuid.bytes, ta_version)
    return shdr + bootstrap, hashlib.sha256(shdr + bootstrap + payload).digest()


def sign(payload: bytes, key, ta_uuid: uuidlib.UUID, ta_version: int = 0, algo: str = "pkcs1") -> bytes:
    """A signed TA (img_type SHDR_BOOTSTRAP_TA) of ``payload`` (the stripped ELF), byte for byte what
    ``sign_encrypt.py sign-enc`` writes for the same key (PKCS#1 v1.5; PSS salts are random). The
    hash is computed here; ``key`` (a token key or any cryptography RSA private key) signs only it.
    The result is verified before it is returned."""
    algo_id = _algo(algo)
    public_key = key.public_key()
    check_ta_key(public_key)
    sig_size = (public_key.key_size + 7) // 8
    headers, digest = signed_header(payload, ta_uuid, ta_version, algo_id, sig_size)
    signature = key.sign(digest, _padding(algo_id), Prehashed(hashes.SHA256()))
    if len(signature) != sig_size:
        raise VerificationError(f"the key returned a {len(signature)}-byte signature, {sig_size} expected")
    shdr, bootstrap = headers[:SHDR.size], headers[SHDR.size:]
    signed = shdr + digest + signature + bootstrap + bytes(payload)
    verify(signed, public_key, expected_uuid=ta_uuid)
    return signed
