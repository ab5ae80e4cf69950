"""STM32MP FSBL header signing: checked with Debian's mkimage, openssl and a verifier written here
from the header description (TF-A stm32image.c / boot_api.h, ST wiki), not from the library."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.helpers import open_token_key
from segway_sign.errors import InputError, SegwayError, UsageError, VerificationError
from segway_sign.formats.stm32 import header as stm32
from segway_sign.formats.stm32.fuses import pkh_fuse_words




# ---------------------------------------------------------------------------------------------
# An independent reading of the format


def u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "little")


def spec_verify(data: bytes) -> dict:
    """Verify an STM32 image the way the ROM describes it; return what was found."""
    assert data[:4] == b"STM2"
    version = u32(data, 72)
    length = u32(data, 76)
    if version == 0x00010000:
        size = 256
        assert u32(data, 100) & 1 == 0, "v1 option_flags bit0 must be clear"
        algo = u32(data, 104)
        xy = data[108:172]
        pkh = hashlib.sha256(xy).digest()
        table = None
    else:
        assert version in (0x00020000, 0x00020200)
        size = 128 + u32(data, 104)
        assert u32(data, 100) & 1, "v2 extension_flags bit0 must be set"
        pos = 128
        auth = None
        while pos < size:
            etype, elen = data[pos : pos + 4], u32(data, pos + 4)
            if etype == b"ST\x00\x02":
                auth = data[pos + 8 : pos + elen]
            else:
                assert etype == b"ST\xff\xff"
            pos += elen
        assert pos == size
        idx, nb, algo = u32(auth, 0), u32(auth, 4), u32(auth, 8)
        xy = auth[12:76]
        table = [auth[76 + 32 * i : 108 + 32 * i] for i in range(nb)]
        assert hashlib.sha256(algo.to_bytes(4, "little") + xy).digest() == table[idx]
        pkh = hashlib.sha256(b"".join(table)).digest()
    assert algo == 1
    payload = data[size : size + length]
    assert len(payload) == length
    assert u32(data, 68) == sum(payload) % 2**32
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    r, s = int.from_bytes(data[4:36], "big"), int.from_bytes(data[36:68], "big")
    pub.verify(encode_dss_signature(r, s), data[72 : size + length], ec.ECDSA(hashes.SHA256()))
    return {"public_key": pub, "pkh": pkh, "table": table, "size": size, "length": length}


def openssl_verify(data: bytes, tmp_path: Path) -> None:
    """openssl dgst -verify over [72, header + image_length) with the header's key and r||s as DER."""
    found = spec_verify(data)
    (tmp_path / "pub.pem").write_bytes(found["public_key"].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    r, s = int.from_bytes(data[4:36], "big"), int.from_bytes(data[36:68], "big")
    (tmp_path / "sig.der").write_bytes(encode_dss_signature(r, s))
    (tmp_path / "signed.bin").write_bytes(data[72 : found["size"] + found["length"]])
    res = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                          "-signature", str(tmp_path / "sig.der"), str(tmp_path / "signed.bin")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Verified OK" in res.stdout, res.stdout + res.stderr


def mkimage(tmp_path: Path, payload: bytes, name="in") -> bytes:
    src, out = tmp_path / f"{name}.bin", tmp_path / f"{name}.stm32"
    src.write_bytes(payload)
    subprocess.run(["mkimage", "-T", "stm32image", "-a", "0x2ffc2500", "-e", "0x2ffc2500", "-d", str(src),
                    str(out)], check=True, capture_output=True, timeout=120)
    return out.read_bytes()


def mkimage_list(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "listed.stm32"
    path.write_bytes(data)
    res = subprocess.run(["mkimage", "-l", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def tf_a_v2_header(payload: bytes, minor: int, entry: int, load: int, binary_type: int) -> bytes:
    """struct stm32_header_v2 as TF-A's stm32image fills it (padding extension of 0x180 bytes)."""
    hdr = b"STM\x32" + bytes(64) + struct.pack("<I", sum(payload) % 2**32)
    hdr += bytes([0, minor, 2, 0]) + struct.pack("<IIIIII", len(payload), entry, 0, load, 0, 0)
    hdr += struct.pack("<III", 1 << 31, 0x180, binary_type) + bytes(16)
    hdr += b"ST\xff\xff" + struct.pack("<I", 0x180) + bytes(376)
    assert len(hdr) == 512
    return hdr + payload


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def table_keys():
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]


# ---------------------------------------------------------------------------------------------
# Header v1 (STM32MP15)


def test_v1_sign_token_key_mkimage_input(token, tmp_path):
    """The main flow: mkimage-made image, key generated inside SoftHSM (direct and via p11-kit)."""
    uri = token.generate("p256", "bl2-signing")
    tkey = open_token_key(token, uri)
    payload = os.urandom(4000)
    unsigned = mkimage(tmp_path, payload)
    signed = stm32.sign(unsigned, tkey, image_version=7)

    found = spec_verify(signed)
    openssl_verify(signed, tmp_path)
    xy = tkey.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)[1:]
    assert found["pkh"] == hashlib.sha256(xy).digest()
    assert signed[256:] == payload and u32(signed, 96) == 7
    assert stm32.verify(signed, expected_pkh=found["pkh"]).image_version == 7
    listed = mkimage_list(tmp_path, signed)
    assert "Option     : 0x00000000" in listed
    assert f"Checksum     : 0x{sum(payload) % 2**32:08x}" in listed
    assert "Image Size   : 4000 bytes" in listed


def test_v1_unchanged_fields_and_input_untouched(key, tmp_path):
    unsigned = mkimage(tmp_path, b"\x5a" * 1024)
    before = bytes(unsigned)
    signed = stm32.sign(unsigned, key)
    assert unsigned == before
    # Only signature, option_flags, algo (already 1) and key change; everything else is mkimage's.
    changed = [i for i in range(256) if signed[i] != unsigned[i]]
    assert all(4 <= i < 68 or 100 <= i < 104 or 108 <= i < 172 for i in changed)
    assert u32(signed, 96) == 0


def test_v1_trailing_padding_is_kept_but_not_signed(key, tmp_path):
    payload = os.urandom(777)
    unsigned = mkimage(tmp_path, payload) + b"\xff" * 300
    signed = stm32.sign(unsigned, key)
    assert signed.endswith(b"\xff" * 300) and len(signed) == len(unsigned)
    spec_verify(signed)
    openssl_verify(signed, tmp_path)
    # Changing the padding does not matter; changing the last payload byte does.
    stm32.verify(signed[:-1] + b"\x00")
    bad = bytearray(signed)
    bad[256 + 776] ^= 1
    with pytest.raises(VerificationError):
        stm32.verify(bytes(bad))


def test_v1_from_raw_binary(key, tmp_path):
    payload = os.urandom(2048)
    unsigned = stm32.create(payload, entry_point=0x2FFC2500, load_address=0x2FFC2400, binary_type=0x10)
    assert "Image Type   : STMicroelectronics STM32 V1.0" in mkimage_list(tmp_path, unsigned)
    # Same header as mkimage (apart from binary type, which mkimage leaves at 0).
    ref = mkimage(tmp_path, payload)
    assert unsigned[:88] == ref[:88] and unsigned[92:255] == ref[92:255] and unsigned[255] == 0x10
    signed = stm32.sign(unsigned, key)
    spec_verify(signed)
    assert stm32.verify(signed).binary_type == 0x10


def sign_until(predicate, key, data, limit=6000):
    for _ in range(limit):
        signed = stm32.sign(data, key)
        if predicate(signed[4:36], signed[36:68]):
            return signed
    raise AssertionError("no signature with the wanted shape in the allotted tries")


@pytest.mark.parametrize("half", ["r", "s"])
def test_leading_zero_in_r_or_s(half, key, tmp_path):
    """r or s below 2**248 must stay left-padded to 32 bytes (probability ~1/256 per signature)."""
    data = mkimage(tmp_path, b"zero" * 64)
    if half == "r":
        signed = sign_until(lambda r, s: r[0] == 0, key, data)
    else:
        signed = sign_until(lambda r, s: s[0] == 0, key, data)
    spec_verify(signed)
    openssl_verify(signed, tmp_path)
    stm32.verify(signed)


V1_SIGNED_FIELDS = {
    "header_version": 74, "image_length": 76, "entry_point": 80, "reserved1": 84, "load_address": 88,
    "reserved2": 92, "version_number": 96, "option_flags": 100, "ecdsa_algorithm": 104,
    "public_key": 140, "padding": 200, "binary_type": 255, "payload": 300, "payload_last": 256 + 999,
}


@pytest.mark.parametrize("field", sorted(V1_SIGNED_FIELDS))
def test_v1_every_signed_field_tampered_is_refused(field, key, tmp_path):
    signed = stm32.sign(mkimage(tmp_path, os.urandom(1000)) + bytes(64), key)
    bad = bytearray(signed)
    bad[V1_SIGNED_FIELDS[field]] ^= 0x01
    if field.startswith("payload"):  # keep the checksum right so that only the signature catches it
        struct.pack_into("<I", bad, 68, sum(bad[256:1256]) % 2**32)
    with pytest.raises((InputError, VerificationError)):
        stm32.verify(bytes(bad))
    with pytest.raises(Exception):
        spec_verify(bytes(bad))


@pytest.mark.parametrize("offset", [0, 4, 40, 67, 68])
def test_v1_signature_checksum_and_magic_tampered(offset, key, tmp_path):
    signed = bytearray(stm32.sign(mkimage(tmp_path, os.urandom(600)), key))
    signed[offset] ^= 0x80
    with pytest.raises((InputError, VerificationError)):
        stm32.verify(bytes(signed))


def test_expected_pkh_mismatch(key, tmp_path):
    signed = stm32.sign(mkimage(tmp_path, b"x" * 100), key)
    with pytest.raises(VerificationError, match="does not match the expected"):
        stm32.verify(signed, expected_pkh=bytes(32))


def test_unsigned_image_is_not_verified(tmp_path):
    with pytest.raises(VerificationError, match="not signed"):
        stm32.verify(mkimage(tmp_path, b"x" * 100))
    with pytest.raises(VerificationError, match="not signed"):
        stm32.verify(stm32.create(b"x" * 100, header_version=stm32.HEADER_V20, entry_point=0))


# ---------------------------------------------------------------------------------------------
# Header v2.0 / v2.2 (STM32MP13 / STM32MP2)


@pytest.mark.parametrize("version,minor", [(stm32.HEADER_V20, 0), (stm32.HEADER_V22, 2)])
def test_v2_create_matches_tf_a_layout(version, minor):
    payload = os.urandom(3000)
    made = stm32.create(payload, header_version=version, entry_point=0x2FFE0000, load_address=0x2FFE0000,
                        binary_type=0x10)
    assert made == tf_a_v2_header(payload, minor, 0x2FFE0000, 0x2FFE0000, 0x10)


@pytest.mark.parametrize("version,minor", [(stm32.HEADER_V20, 0), (stm32.HEADER_V22, 2)])
def test_v2_sign_with_table(version, minor, table_keys, tmp_path):
    payload = os.urandom(5000)
    unsigned = tf_a_v2_header(payload, minor, 0x2FFE0000, 0x2FFE0000, 0x10) + b"\xff" * 100
    pubs = [k.public_key() for k in table_keys]
    signed = stm32.sign(unsigned, table_keys[5], table_keys=pubs, image_version=2)
    found = spec_verify(signed)
    openssl_verify(signed, tmp_path)
    assert len(signed) == len(unsigned) and signed[512:] == unsigned[512:]
    assert u32(signed, 100) == (1 | 1 << 31) and u32(signed, 104) == 0x180
    assert u32(signed, 108) == 0x10 and u32(signed, 128 + 8) == 5  # binary type, pk_idx
    expected_entries = []
    for pub in pubs:
        xy = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        expected_entries.append(hashlib.sha256(b"\x01\x00\x00\x00" + xy).digest())
    assert found["table"] == expected_entries
    pkhth = hashlib.sha256(b"".join(expected_entries)).digest()
    assert found["pkh"] == pkhth
    result = stm32.verify(signed, expected_pkh=pkhth)
    assert (result.pk_index, result.header_version) == (5, {0: "2.0", 2: "2.2"}[minor])
    # Re-signing with another key of the table replaces the authentication extension.
    again = stm32.sign(signed, table_keys[0], table_keys=pubs)
    assert stm32.verify(again, expected_pkh=pkhth).pk_index == 0
    spec_verify(again)


def test_v2_token_key(softhsm, tmp_path):
    uri = softhsm.generate("p256", "mp13-key0")
    tkey = open_token_key(softhsm, uri)
    unsigned = stm32.create(os.urandom(3000), header_version=stm32.HEADER_V20, entry_point=0x2FFE0000)
    signed = stm32.sign(unsigned, tkey)
    found = spec_verify(signed)
    openssl_verify(signed, tmp_path)
    assert found["pkh"] == hashlib.sha256(found["table"][0]).digest()


V2_SIGNED_FIELDS = {
    "header_version": 74, "image_length": 76, "entry_point": 80, "load_address": 88, "version_number": 96,
    "extension_flags": 100, "extension_length": 104, "binary_type": 108, "padding": 120,
    "auth_type": 129, "auth_length": 132, "pk_idx": 136, "nb_pk": 140, "algo": 144, "public_key": 160,
    "table_entry_0": 220, "table_entry_7": 440, "padding_ext": 480, "payload": 700,
}


@pytest.mark.parametrize("field", sorted(V2_SIGNED_FIELDS))
def test_v2_every_signed_field_tampered_is_refused(field, table_keys):
    unsigned = tf_a_v2_header(os.urandom(1000), 0, 0x2FFE0000, 0x2FFE0000, 0x10)
    signed = stm32.sign(unsigned, table_keys[2], table_keys=[k.public_key() for k in table_keys])
    bad = bytearray(signed)
    bad[V2_SIGNED_FIELDS[field]] ^= 0x01
    if field == "payload":
        struct.pack_into("<I", bad, 68, sum(bad[512:1512]) % 2**32)
    with pytest.raises((InputError, VerificationError)):
        stm32.verify(bytes(bad))


def test_v2_signing_key_must_be_in_table(table_keys, key):
    unsigned = stm32.create(b"p" * 64, header_version=stm32.HEADER_V20, entry_point=0)
    with pytest.raises(UsageError, match="not in the public-key table"):
        stm32.sign(unsigned, key, table_keys=[k.public_key() for k in table_keys])
    with pytest.raises(UsageError, match="1 to 8"):
        stm32.sign(unsigned, key, table_keys=[key.public_key()] * 9)


def test_v1_refuses_a_table(key, tmp_path):
    with pytest.raises(UsageError, match="header v2"):
        stm32.sign(mkimage(tmp_path, b"q" * 10), key, table_keys=[key.public_key()])


def test_v2_decryption_extension_refused(key):
    unsigned = bytearray(stm32.create(b"e" * 64, header_version=stm32.HEADER_V20, entry_point=0))
    struct.pack_into("<I", unsigned, 128, 0x01005453)
    with pytest.raises(InputError, match="decryption"):
        stm32.sign(bytes(unsigned), key)


# ---------------------------------------------------------------------------------------------
# Bad input and keys


def test_bad_inputs(key, tmp_path):
    good = mkimage(tmp_path, b"g" * 500)
    cases = {
        "empty": b"",
        "short": good[:100],
        "truncated header": good[:200],
        "truncated payload": good[:600],
        "wrong magic": b"STM3" + good[4:],
        "version 3.0": good[:72] + struct.pack("<I", 0x00030000) + good[76:],
        "version 1.1": good[:72] + struct.pack("<I", 0x00010100) + good[76:],
        "version 2.3": good[:72] + struct.pack("<I", 0x00020300) + good[76:],
        "length too big": good[:76] + struct.pack("<I", 0xFFFFFFF0) + good[80:],
        "v2 bad ext length": bytes(stm32.create(b"x", header_version=stm32.HEADER_V20, entry_point=0)[:132])
        + struct.pack("<I", 4) + bytes(380) + b"x",
    }
    for name, data in cases.items():
        with pytest.raises(InputError) as err:
            stm32.sign(data, key)
        assert "\n" not in str(err.value), name


def test_overlong_file_is_trailing_padding(key, tmp_path):
    signed = stm32.sign(mkimage(tmp_path, b"o" * 300) + os.urandom(4096), key)
    assert stm32.verify(signed).image_length == 300


@pytest.mark.parametrize("make", [
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: ec.generate_private_key(ec.BrainpoolP256R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
])
def test_wrong_key_types_refused(make, tmp_path):
    with pytest.raises(UsageError):
        stm32.sign(mkimage(tmp_path, b"k" * 10), make())


def test_p256_image_relabelled_brainpool_is_refused(key, tmp_path):
    signed = bytearray(stm32.sign(mkimage(tmp_path, b"b" * 10), key))
    struct.pack_into("<I", signed, 104, 2)
    with pytest.raises(VerificationError, match="does not verify"):
        stm32.verify(bytes(signed))


# ---------------------------------------------------------------------------------------------
# Brainpool 256 (brainpoolP256t1): token keys only, checked here with the openssl command


BP256T1_OID = "1.3.36.3.3.2.8.1.1.8"


def brainpool_pem(xy: bytes) -> bytes:
    """SubjectPublicKeyInfo for a brainpoolP256t1 point, written out here from RFC 5480."""
    spki = asn1_keys.PublicKeyInfo({
        "algorithm": {"algorithm": "ec", "parameters": asn1_keys.ECDomainParameters(name="named", value=BP256T1_OID)},
        "public_key": b"\x04" + xy})
    return asn1_pem.armor("PUBLIC KEY", spki.dump())


def openssl_verify_brainpool(data: bytes, tmp_path: Path) -> bool:
    """openssl dgst -sha256 -verify over the signed range with the header's brainpoolP256t1 key."""
    version, length = u32(data, 72), u32(data, 76)
    if version == 0x00010000:
        size, algo, xy = 256, u32(data, 104), data[108:172]
    else:
        size = 128 + u32(data, 104)
        assert data[128:132] == b"ST\x00\x02"
        algo, xy = u32(data, 128 + 16), data[128 + 20 : 128 + 84]
    assert algo == 2
    (tmp_path / "bp.pem").write_bytes(brainpool_pem(xy))
    (tmp_path / "bp.sig").write_bytes(asn1_algos.DSASignature.from_p1363(data[4:68]).dump())
    (tmp_path / "bp.bin").write_bytes(data[72 : size + length])
    res = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "bp.pem"),
                          "-signature", str(tmp_path / "bp.sig"), str(tmp_path / "bp.bin")],
                         capture_output=True, text=True, timeout=120)
    return res.returncode == 0 and "Verified OK" in res.stdout


def token_point(tkey) -> bytes:
    """X||Y of a token key as the token reports it (CKA_EC_POINT of the public object)."""
    point = tkey.public_key().point
    assert len(point) == 65 and point[0] == 4
    return point[1:]


def test_brainpool_v1_token_key_mkimage_input(token, tmp_path):
    uri = token.generate("bp256t1", "bl2-bp")
    tkey = open_token_key(token, uri)
    assert tkey.curve_name == "brainpoolP256t1" and tkey.curve_oid == BP256T1_OID
    payload = os.urandom(4000)
    unsigned = mkimage(tmp_path, payload)
    signed = stm32.sign(unsigned, tkey, image_version=5)

    xy = token_point(tkey)
    assert u32(signed, 104) == 2 and signed[108:172] == xy and u32(signed, 100) == 0
    assert signed[256:] == payload and u32(signed, 96) == 5
    assert openssl_verify_brainpool(signed, tmp_path)
    pkh = hashlib.sha256(xy).digest()
    result = stm32.verify(signed, expected_pkh=pkh)
    assert (result.algo, result.image_version) == (2, 5)
    assert pkh_fuse_words([tkey.public_key()], 1)["hash"] == pkh.hex()
    listed = mkimage_list(tmp_path, signed)
    assert "Option     : 0x00000000" in listed and "Image Size   : 4000 bytes" in listed

    # Tampering: payload (checksum kept right), signature, key, algorithm field.
    for offset in (256 + 17, 4, 40, 120, 104):
        bad = bytearray(signed)
        bad[offset] ^= 0x01 if offset != 104 else 0x03  # algo 2 -> 1 (P-256)
        struct.pack_into("<I", bad, 68, sum(bad[256:4256]) % 2**32)
        with pytest.raises((InputError, VerificationError)):
            stm32.verify(bytes(bad))
        if offset != 104:
            assert not openssl_verify_brainpool(bytes(bad), tmp_path)


def test_brainpool_v2_table_and_pkhth(softhsm, tmp_path):
    uris = [softhsm.generate("bp256t1", f"mp13-bp{i}") for i in range(2)]
    keys = [open_token_key(softhsm, u) for u in uris]
    pubs = [k.public_key() for k in keys]
    unsigned = tf_a_v2_header(os.urandom(3000), 0, 0x2FFE0000, 0x2FFE0000, 0x10)
    signed = stm32.sign(unsigned, keys[1], table_keys=pubs)
    assert openssl_verify_brainpool(signed, tmp_path)
    entries = [hashlib.sha256(b"\x02\x00\x00\x00" + token_point(k)).digest() for k in keys]
    pkhth = hashlib.sha256(b"".join(entries)).digest()
    auth = signed[128 + 8 :]
    assert (u32(auth, 0), u32(auth, 4), u32(auth, 8)) == (1, 2, 2)
    assert auth[76 : 76 + 64] == b"".join(entries)
    result = stm32.verify(signed, expected_pkh=pkhth)
    assert result.pk_index == 1 and result.algo == 2
    fuses = pkh_fuse_words(pubs, 2)
    assert fuses["hash"] == pkhth.hex() and fuses["pk_hashes"] == [e.hex() for e in entries]
    bad = bytearray(signed)
    bad[600] ^= 0x40
    struct.pack_into("<I", bad, 68, sum(bad[512:3512]) % 2**32)
    with pytest.raises(VerificationError):
        stm32.verify(bytes(bad))
    assert not openssl_verify_brainpool(bytes(bad), tmp_path)


def test_brainpool_point_off_the_curve_is_refused(softhsm, tmp_path):
    tkey = open_token_key(softhsm, softhsm.generate("bp256t1", "bl2-bp"))
    signed = bytearray(stm32.sign(mkimage(tmp_path, b"c" * 64), tkey))
    signed[171] ^= 0x01  # last byte of Y: no longer a point of brainpoolP256t1
    with pytest.raises(VerificationError):
        stm32.verify(bytes(signed))


# ---------------------------------------------------------------------------------------------
# Fuse values


def test_fuse_words_v1(key):
    xy = key.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)[1:]
    digest = hashlib.sha256(xy).digest()
    fuses = pkh_fuse_words([key.public_key()], 1)
    assert fuses["kind"] == "PKH" and fuses["hash"] == digest.hex()
    # OTP word i is the big-endian reading of hash bytes 4i..4i+3 (U-Boot stm32key).
    assert fuses["otp_words"] == ["0x" + digest[4 * i : 4 * i + 4].hex() for i in range(8)]
    assert fuses["otp_first_word"] == 24
    with pytest.raises(UsageError):
        pkh_fuse_words([key.public_key()] * 2, 1)
    with pytest.raises(UsageError):
        pkh_fuse_words([key.public_key()], 3)


def test_fuse_words_v2_match_signed_image(table_keys):
    pubs = [k.public_key() for k in table_keys]
    fuses = pkh_fuse_words(pubs, 2)
    signed = stm32.sign(stm32.create(b"f" * 32, header_version=stm32.HEADER_V20, entry_point=0),
                        table_keys[1], table_keys=pubs)
    assert spec_verify(signed)["pkh"].hex() == fuses["hash"]
    assert fuses["kind"] == "PKHTH" and len(fuses["pk_hashes"]) == 8


def test_errors_are_segway_errors():
    assert issubclass(InputError, SegwayError) and issubclass(VerificationError, SegwayError)
