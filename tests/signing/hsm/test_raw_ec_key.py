"""brainpoolP256t1 token keys (curves cryptography lacks): made and used in SoftHSM, checked by openssl."""

import hashlib
import subprocess

import pytest
from asn1crypto import algos, core, keys, pem

from segway_sign.errors import InputError, TokenError, UsageError
from segway_sign.hsm import PinSource, TokenRawECKey, keygen, open_session
from segway_sign.raw_ec import RawECPublicKey, decode_ec_point

BP256T1_OID = "1.3.36.3.3.2.8.1.1.8"


def openssl_accepts(point: bytes, digest: bytes, raw_sig: bytes, tmp_path) -> bool:
    """openssl pkeyutl -verify with a SubjectPublicKeyInfo written here from RFC 5480."""
    spki = keys.PublicKeyInfo({
        "algorithm": {"algorithm": "ec", "parameters": keys.ECDomainParameters(name="named", value=BP256T1_OID)},
        "public_key": point}).dump()
    (tmp_path / "pub.pem").write_bytes(pem.armor("PUBLIC KEY", spki))
    (tmp_path / "sig.der").write_bytes(algos.DSASignature.from_p1363(raw_sig).dump())
    (tmp_path / "digest.bin").write_bytes(digest)
    res = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
                          "-sigfile", str(tmp_path / "sig.der"), "-in", str(tmp_path / "digest.bin")],
                         capture_output=True, text=True, timeout=120)
    return res.returncode == 0


def test_generate_find_and_sign_through_each_transport(token, tmp_path):
    uri = token.generate("bp256t1", "bp")
    key = token.open_key(uri)
    assert isinstance(key, TokenRawECKey)
    assert (key.curve_name, key.curve_oid, key.key_size) == ("brainpoolP256t1", BP256T1_OID, 256)
    point = key.public_key().point
    assert len(point) == 65 and point[0] == 4
    # CKA_ID is the RFC 5280 key identifier: SHA-1 of the subjectPublicKey bits (the point).
    assert key.key_id == hashlib.sha1(point).digest()
    digest = hashlib.sha256(b"payload").digest()
    sig = key.sign_digest(digest)
    assert len(sig) == 64 and key.stats.sizes == [32]
    assert openssl_accepts(point, digest, sig, tmp_path)
    assert not openssl_accepts(point, hashlib.sha256(b"other").digest(), sig, tmp_path)
    # Found again by id alone, and by label.
    by_id = token.open_key(f"{token.token_uri};id={''.join('%%%02x' % b for b in key.key_id)}")
    assert by_id.public_key() == key.public_key()
    assert token.open_key(f"{token.token_uri};object=bp").public_key() == key.public_key()


def test_protection_and_refusals(softhsm):
    session = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    key = keygen.generate(session, "bp256t1", "bp")
    attrs = keygen.key_attributes(session, key)
    assert attrs["sensitive"] and not attrs["extractable"] and attrs["never_extractable"] and attrs["local"]
    with pytest.raises(UsageError, match="32-byte digest"):
        key.sign_digest(b"short")
    with pytest.raises(UsageError, match="brainpoolP256t1"):
        key.sign(b"data", None)
    with pytest.raises(TokenError, match="cannot be exported"):
        key.private_bytes()


def test_token_without_the_curve_is_a_one_line_error(softhsm):
    # A SoftHSM token that offers ECDSA but no EC key generation, so no brainpoolP256t1 keys.
    with open(softhsm.conf, "a") as conf:
        conf.write("slots.mechanisms = CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_RSA_PKCS,CKM_ECDSA\n")
    softhsm.activate()
    session = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    with pytest.raises(TokenError) as err:
        keygen.generate(session, "bp256t1", "bp")
    message = str(err.value)
    assert "does not offer curve brainpoolP256t1" in message and "\n" not in message
    assert not keygen.objects_labelled(session, "bp")


def test_ec_point_encodings():
    point = b"\x04" + bytes(range(64))
    assert decode_ec_point(point, 32) == point
    assert decode_ec_point(core.OctetString(point).dump(), 32) == point
    with pytest.raises(InputError):
        decode_ec_point(b"\x02" + bytes(32), 32)
    pub = RawECPublicKey("brainpoolP256t1", point)
    assert RawECPublicKey.from_spki(pub.spki_der()) == pub
    assert RawECPublicKey.from_spki(b"garbage") is None
