"""OP-TEE TA signing: byte-identical to upstream's sign_encrypt.py (Debian's pinned OP-TEE source) for
PKCS#1 v1.5 with the same key, PSS checked by sign_encrypt.py verify and openssl, and every tampered
TA refused by ``ta verify`` with one line."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from tests.fit_fixtures import import_rsa_key
from tests.helpers import ok, one_line_error, run_cli
from segway_sign.errors import InputError, UsageError, VerificationError
from segway_sign.formats.optee import ta
from tests.signing.formats.optee.ta_fixtures import TA_UUID, build_ta_elf, default_key, oracle_sign, oracle_verify

PKCS1 = "TEE_ALG_RSASSA_PKCS1_V1_5_SHA256"
PSS = "TEE_ALG_RSASSA_PKCS1_PSS_MGF1_SHA256"


def pem_key(path: Path, bits: int) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(65537, bits)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def public_pem(key, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def load_pem(path: Path) -> rsa.RSAPrivateKey:
    return serialization.load_pem_private_key(path.read_bytes(), None)


@pytest.fixture(scope="module")
def elf(tmp_path_factory) -> Path:
    return build_ta_elf(tmp_path_factory.mktemp("ta"))


# ------------------------------------------------------------------------------------------------
# Byte identity with upstream


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_pkcs1_byte_identical_to_sign_encrypt(tmp_path, elf, bits):
    """The format API with a file key: the same bytes sign_encrypt.py sign-enc writes."""
    if bits == 4096:
        key_path = default_key()
    else:
        key_path = tmp_path / "ta.pem"
        pem_key(key_path, bits)
    expected = oracle_sign(elf, key_path, tmp_path / "oracle.ta", version=5)
    ours = ta.sign(elf.read_bytes(), load_pem(key_path), TA_UUID, 5, "pkcs1")
    assert ours == expected
    result = ta.verify(ours, load_pem(key_path).public_key(), expected_uuid=TA_UUID)
    assert (result.ta.uuid, result.ta.ta_version, result.ta.img_type) == (TA_UUID, 5, ta.SHDR_BOOTSTRAP_TA)


def test_token_cli_pkcs1_byte_identical(tmp_path, softhsm, elf):
    """``ta sign`` with upstream's default key imported into SoftHSM: the token's signature, the
    same file as sign_encrypt.py's; sign_encrypt.py verify accepts it."""
    key = load_pem(default_key())
    uri = import_rsa_key(softhsm, key, "optee-ta")
    expected = oracle_sign(elf, default_key(), tmp_path / "oracle.ta", version=2)
    out = tmp_path / f"{TA_UUID}.ta"
    text = ok(run_cli(["ta", "sign", "--key", uri, "--in", str(elf), "--uuid", str(TA_UUID), "--ta-version", "2",
                       "--out", str(out), "--pin-file", str(softhsm.pin_file), "--json"], softhsm))
    assert out.read_bytes() == expected
    summary = json.loads(text)
    assert summary["uuid"] == str(TA_UUID) and summary["ta_version"] == 2 and summary["algo"] == PKCS1
    res = oracle_verify(out, default_key())
    assert res.returncode == 0, res.stdout + res.stderr


def test_token_cli_pss(tmp_path, softhsm, elf):
    """PSS salts are random: the same structure as sign_encrypt.py's, a different signature that
    sign_encrypt.py verify and openssl (salt length 32, MGF1-SHA256, as OP-TEE checks) accept."""
    key_path = tmp_path / "ta.pem"
    key = pem_key(key_path, 3072)
    uri = import_rsa_key(softhsm, key, "optee-ta")
    expected = oracle_sign(elf, key_path, tmp_path / "oracle.ta", algo=PSS)
    out = tmp_path / "pss.ta"
    ok(run_cli(["ta", "sign", "--key", uri, "--in", str(elf), "--algo", "pss", "--out", str(out),
                "--pin-file", str(softhsm.pin_file)], softhsm))  # UUID from the ELF's .ta_head
    data = out.read_bytes()
    mine, theirs = ta.parse(data), ta.parse(expected)
    assert len(data) == len(expected)
    assert (mine.header, mine.digest, mine.uuid, mine.ta_version, mine.payload) == \
        (theirs.header, theirs.digest, theirs.uuid, theirs.ta_version, theirs.payload)
    assert mine.signature != theirs.signature
    res = oracle_verify(out, key_path)
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "digest").write_bytes(mine.digest)
    (tmp_path / "sig").write_bytes(mine.signature)
    public_pem(key, tmp_path / "pub.pem")
    subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
                    "-pkeyopt", "digest:sha256", "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt",
                    "rsa_pss_saltlen:32", "-pkeyopt", "rsa_mgf1_md:sha256", "-in", str(tmp_path / "digest"),
                    "-sigfile", str(tmp_path / "sig")], check=True, capture_output=True)
    # and ours accepts upstream's PSS TA
    assert ta.verify(expected, key.public_key()).ta.algo == ta.ALGO_PSS


def test_resign_upstream_signed_ta(tmp_path, softhsm, elf):
    """A TA as Debian ships it (signed with upstream's default key) signed again with our key:
    UUID and version carried over; only our key verifies the result."""
    upstream = tmp_path / "upstream.ta"
    oracle_sign(elf, default_key(), upstream, version=9)
    ours = tmp_path / "ours.ta"
    key_path = tmp_path / "ta.pem"
    key = pem_key(key_path, 2048)
    uri = import_rsa_key(softhsm, key, "optee-ta")
    ok(run_cli(["ta", "sign", "--key", uri, "--in", str(upstream), "--out", str(ours),
                "--pin-file", str(softhsm.pin_file)], softhsm))
    assert ours.read_bytes() == oracle_sign(elf, key_path, tmp_path / "oracle.ta", version=9)
    ok(run_cli(["ta", "verify", str(ours), "--pubkey", str(public_pem(key, tmp_path / "pub.pem")),
                "--uuid", str(TA_UUID)]))
    ok(run_cli(["ta", "verify", "--in", str(ours), "--key", uri, "--pin-file", str(softhsm.pin_file)], softhsm))
    public_pem(load_pem(default_key()), tmp_path / "default.pub.pem")
    one_line_error(run_cli(["ta", "verify", str(ours), "--pubkey", str(tmp_path / "default.pub.pem")]),
                   match="sig_size")


def test_verify_with_certificate(tmp_path, elf):
    key_path = tmp_path / "ta.pem"
    key = pem_key(key_path, 2048)
    subprocess.run(["openssl", "req", "-batch", "-new", "-x509", "-key", str(key_path), "-out",
                    str(tmp_path / "ta.crt"), "-subj", "/CN=ta"], check=True, capture_output=True)
    signed = tmp_path / "x.ta"
    oracle_sign(elf, key_path, signed, version=1)
    text = ok(run_cli(["ta", "verify", str(signed), "--cert", str(tmp_path / "ta.crt")]))
    assert text.startswith(f"OK {signed}: UUID {TA_UUID}, ta_version 1, {PKCS1}, RSA 2048")
    assert public_pem(key, tmp_path / "p.pem")


def test_uuid_checks(tmp_path, elf):
    key_path = tmp_path / "ta.pem"
    key = pem_key(key_path, 2048)
    other = uuid.UUID("11111111-2222-3333-4444-555555555555")
    with pytest.raises(VerificationError, match="signed as"):
        ta.verify(ta.sign(elf.read_bytes(), key, TA_UUID), key.public_key(), expected_uuid=other)
    res = run_cli(["ta", "sign", "--key", "pkcs11:object=x", "--in", str(elf), "--uuid", str(other),
                   "--out", str(tmp_path / "o.ta")])
    one_line_error(res, code=2, match=".ta_head")
    plain = tmp_path / "plain.elf"
    plain.write_bytes(b"\x7fELF" + bytes(60))
    one_line_error(run_cli(["ta", "sign", "--key", "pkcs11:object=x", "--in", str(plain),
                            "--out", str(tmp_path / "o.ta")]), code=2, match="--uuid")


def _legacy(payload: bytes, key) -> bytes:
    """An img_type 0 TA (no bootstrap header), which OP-TEE still loads."""
    sig_size = key.key_size // 8
    shdr = ta.SHDR.pack(ta.SHDR_MAGIC, ta.SHDR_TA, len(payload), ta.ALGO_PKCS1, 32, sig_size)
    digest = hashlib.sha256(shdr + payload).digest()
    sig = key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return shdr + digest + sig + payload


def test_legacy_ta(tmp_path, elf):
    key = pem_key(tmp_path / "k.pem", 2048)
    data = _legacy(elf.read_bytes(), key)
    result = ta.verify(data, key.public_key())
    assert result.ta.uuid is None and result.ta.img_type == ta.SHDR_TA
    with pytest.raises(VerificationError, match="legacy"):
        ta.verify(data, key.public_key(), expected_uuid=TA_UUID)


# ------------------------------------------------------------------------------------------------
# Refusals


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _set(data: bytes, fmt: str, at: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def tampered(good: bytes, other_key_ta: bytes, key_bytes: int) -> dict[str, tuple[bytes, str]]:
    sig_at, bs_at = 20 + 32, 20 + 32 + key_bytes
    payload_at = bs_at + 20
    return {
        "payload byte": (_flip(good, payload_at + 100), "hash does not match"),
        "last payload byte": (_flip(good, len(good) - 1), "hash does not match"),
        "signature byte": (_flip(good, sig_at + 7), "signature"),
        "hash byte": (_flip(good, 20 + 3), "signature"),
        "uuid byte": (_flip(good, bs_at + 2), "hash does not match"),
        "ta_version": (_set(good, "<I", bs_at + 16, 77), "hash does not match"),
        "another key": (other_key_ta, "signature"),
        "truncated": (good[:-1], "truncated"),
        "truncated header": (good[:40], "truncated"),
        "trailing byte": (good + b"\0", "trailing"),
        "img_size": (_set(good, "<I", 8, len(good) - payload_at - 1), "trailing"),
        "sig_size": (_set(good, "<H", 18, key_bytes - 1), "trailing"),
        "hash_size": (_set(good, "<H", 16, 20), "hash_size"),
        "algo": (_set(good, "<I", 12, 0x70005830), "algorithm"),
        "algo pss": (_set(good, "<I", 12, ta.ALGO_PSS), "signature"),
        "legacy type": (_set(good, "<I", 4, ta.SHDR_TA), "trailing"),
        "magic": (_flip(good, 0), "magic"),
        "encrypted": (_set(good, "<I", 4, ta.SHDR_ENCRYPTED_TA), "encrypted TA"),
        "subkey": (_set(good, "<I", 4, ta.SHDR_SUBKEY), "subkey"),
        "empty": (b"", "shorter"),
    }


def test_tampered_refused(tmp_path, elf):
    key = pem_key(tmp_path / "k.pem", 2048)
    other = rsa.generate_private_key(65537, 2048)
    good = ta.sign(elf.read_bytes(), key, TA_UUID, 3)
    pub = public_pem(key, tmp_path / "pub.pem")
    ok(run_cli(["ta", "verify", "--in", str(_write(tmp_path / "good.ta", good)), "--pubkey", str(pub)]))
    for name, (data, match) in tampered(good, ta.sign(elf.read_bytes(), other, TA_UUID, 3), 256).items():
        with pytest.raises((InputError, VerificationError), match=match):
            ta.verify(data, key.public_key())
        path = _write(tmp_path / f"{name.replace(' ', '-')}.ta", data)
        one_line_error(run_cli(["ta", "verify", str(path), "--pubkey", str(pub)]), match=match)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_sign_refuses(tmp_path, softhsm, elf):
    ec_uri = softhsm.generate("p256", "ec")
    out = tmp_path / "x.ta"
    pin = ["--pin-file", str(softhsm.pin_file)]
    one_line_error(run_cli(["ta", "sign", "--key", ec_uri, "--in", str(elf), "--out", str(out), *pin], softhsm),
                   code=2, match="not RSA")
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(UsageError, match="under 2048"):
        ta.sign(elf.read_bytes(), small, TA_UUID)
    key = pem_key(tmp_path / "k.pem", 2048)
    encrypted = _set(ta.sign(elf.read_bytes(), key, TA_UUID), "<I", 4, ta.SHDR_ENCRYPTED_TA)
    enc = _write(tmp_path / "enc.ta", encrypted)
    uri = import_rsa_key(softhsm, key, "optee-ta")
    one_line_error(run_cli(["ta", "sign", "--key", uri, "--in", str(enc), "--out", str(out), *pin], softhsm),
                   match="encrypted TA")
    junk = _write(tmp_path / "junk.bin", b"not an elf")
    one_line_error(run_cli(["ta", "sign", "--key", uri, "--in", str(junk), "--uuid", str(TA_UUID),
                            "--out", str(out), *pin], softhsm), match="neither an ELF")
    assert not out.exists()
    one_line_error(run_cli(["ta", "verify", str(enc), "--pubkey", "/nonexistent", "--cert", "x"]), code=2,
                   match="TA key once")
    ec_pub = _write(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    one_line_error(run_cli(["ta", "verify", str(enc), "--pubkey", str(ec_pub)]), match="encrypted TA")
    good = _write(tmp_path / "good.ta", ta.sign(elf.read_bytes(), key, TA_UUID))
    one_line_error(run_cli(["ta", "verify", str(good), "--pubkey", str(ec_pub)]), code=2, match="not RSA")
