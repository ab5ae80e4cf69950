"""OP-TEE TAs: ``ta verify`` on a TA built like <uuid>.stripped.elf and signed by a token RSA key
(PKCS#1 v1.5 and PSS), against the TA public key OP-TEE is built with."""

from __future__ import annotations

import struct
from pathlib import Path

from cryptography.hazmat.primitives.serialization import (Encoding, PublicFormat, load_der_public_key,
                                                          load_pem_public_key)
from tests.signing.fuzz.mutator import Field

from .base import DeviceView, Input, Shop, Target, all_bytes

SHDR = 20

# Device bytes: OP-TEE's REE-FS TA loader (core/kernel/ree_fs_ta.c) copies the signed header
# (struct shdr, hash, signature), checks the signature, hashes struct shdr, the bootstrap header
# (uuid, ta_version) and the payload, refuses any size that does not end exactly at the file's end,
# and maps the payload: every byte of the file is read and acted on.


def fields(data: bytes) -> list[Field]:
    return [Field(8, 4, "little", "img_size"), Field(16, 2, "little", "hash_size"),
            Field(18, 2, "little", "sig_size"), Field(4, 4, "little", "img_type")]


def hot(data: bytes) -> list[tuple[int, int]]:
    """struct shdr, the hash, the signature and the bootstrap header."""
    if len(data) < SHDR:
        return [(0, len(data))]
    hash_size, sig_size = struct.unpack_from("<HH", data, 16)
    return [(0, min(len(data), SHDR + hash_size + sig_size + 20))]


def public_numbers(data: bytes) -> object:
    """What tee.bin holds of the key (pem_to_pub_c.py: modulus and exponent), whatever its encoding."""
    for loader in (load_pem_public_key, load_der_public_key):
        try:
            numbers = loader(data).public_numbers()
            return (getattr(numbers, "n", None), getattr(numbers, "e", None), type(numbers).__name__)
        except Exception:  # noqa: BLE001 - any unreadable key is simply "not the valid key"
            pass
    return data


def _build(algo: str):
    def build(shop: Shop, case: Path) -> None:
        from tests.signing.formats.optee import ta_fixtures as fixtures
        uri = shop.key("rsa2048", "fuzz-optee-ta")
        elf = shop.once("optee-ta-elf", lambda where: fixtures.build_ta_elf(where))
        shop.cli(["ta", "sign", "--key", uri, "--in", str(elf), "--algo", algo, "--ta-version", "3",
                  "--out", str(case / "ta.ta"), *shop.pin])
        shop.token.activate()
        public = shop.token.open_key(uri).public_key()
        (case / "ta.pub.pem").write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return build


def _argv(shop: Shop, case: Path) -> list[str]:
    from tests.signing.formats.optee import ta_fixtures as fixtures
    return ["ta", "verify", str(case / "ta.ta"), "--pubkey", str(case / "ta.pub.pem"),
            "--uuid", str(fixtures.TA_UUID)]


TA = Input("ta.ta", all_bytes, fields=fields, hot=hot, weight=6)
PUBKEY = Input("ta.pub.pem", DeviceView(public_numbers), text="pem", weight=1)

TARGETS = [
    Target("ta verify", (TA, PUBKEY), _build("pkcs1"), _argv),
    Target("ta verify (pss)", (TA, PUBKEY), _build("pss"), _argv),
]
