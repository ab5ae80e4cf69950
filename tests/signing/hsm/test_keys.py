"""Token keys behave as cryptography keys: signatures verify, digests only go to the token."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from segway_sign.errors import TokenError, UsageError
from segway_sign.hsm import PinSource, keygen, open_session


@pytest.mark.parametrize("kind", ["rsa2048", "rsa3072", "p256", "p384"])
def test_sign_and_verify_through_each_transport(token, kind):
    key = token.open_key(token.generate(kind, f"k-{kind}"))
    data = b"payload" * 1000
    if kind.startswith("rsa"):
        for pad in (padding.PKCS1v15(), padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)):
            sig = key.sign(data, pad, hashes.SHA256())
            key.public_key().verify(sig, data, pad, hashes.SHA256())
    else:
        sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))
    # Only a digest (or a DigestInfo around it) reached the token, whatever the data size.
    assert max(key.stats.sizes) <= 51


def test_prehashed_signing(softhsm):
    key = softhsm.open_key(softhsm.generate("p256", "k"))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"abc")
    d = digest.finalize()
    sig = key.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    key.public_key().verify(sig, b"abc", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(UsageError, match="prehashed"):
        key.sign(b"short", ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_generated_keys_are_sensitive_and_never_extractable(softhsm):
    session = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    key = keygen.generate(session, "rsa2048", "fit")
    attrs = keygen.key_attributes(session, key)
    assert attrs == {"sensitive": True, "extractable": False, "always_sensitive": True,
                     "never_extractable": True, "local": True, "token": True, "private": True}
    # CKA_ID is the RFC 5280 key identifier, i.e. the certificate's subjectKeyIdentifier.
    assert key.key_id == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    with pytest.raises(TokenError, match="cannot be exported"):
        key.private_bytes()


def test_refuses_to_overwrite_existing_keys(softhsm):
    softhsm.generate("p256", "dup")
    session = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    with pytest.raises(TokenError, match="refusing to overwrite"):
        keygen.generate(session, "p256", "dup")
    replaced = keygen.generate(session, "p256", "dup", replace=True)
    assert len(keygen.objects_labelled(session, "dup")) == 2  # the new private and public key


def test_ambiguous_and_missing_keys(softhsm):
    softhsm.generate("p256", "a")
    session = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    keygen.generate(session, "p256", "b")
    # Two keys share no label, but a URI naming only the token matches nothing specific.
    with pytest.raises(UsageError, match="names no key"):
        softhsm.open_key(softhsm.token_uri)
    with pytest.raises(TokenError, match="no private key"):
        softhsm.open_key(f"{softhsm.token_uri};object=missing")
    # Same label twice (a second ceremony imported under the old name) is ambiguous.
    softhsm.activate()
    s2 = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    s2.call(lambda s: s.generate_keypair(__import__("pkcs11").KeyType.RSA, 2048, label="a", id=b"\x01", store=True),
            "gen")
    with pytest.raises(TokenError, match="2 private keys match"):
        softhsm.open_key(f"{softhsm.token_uri};object=a")
