"""FIT signing: same bytes as Debian's mkimage, U-Boot's node rules, host verification, errors."""

from __future__ import annotations

import os
import subprocess

import libfdt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fit_fixtures import (EPOCH, empty_dtb, import_rsa_key, make_unsigned_fit, mkimage_sign, pem_key_pair, tree)
from segway_dev import fit_attacks
from segway_sign.errors import InputError, SegwayError, UsageError, VerificationError
from segway_sign.formats.fit.keys import add_pubkey, public_key_from_node
from segway_sign.formats.fit.sign import sign_fit
from segway_sign.formats.fit.tree import open_fdt
from segway_sign.formats.fit.verify import verify_fit


@pytest.fixture(autouse=True)
def _epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def _differences(a: bytes, b: bytes) -> set[tuple[str, str]]:
    ta, tb = tree(a), tree(b)
    assert ta.keys() == tb.keys()
    return {(node, prop) for node in ta for prop in set(ta[node]) | set(tb[node])
            if ta[node].get(prop) != tb[node].get(prop)}


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external-data"])
def test_same_bytes_as_mkimage(token, tmp_path, external):
    """mkimage -F -k and segway-sign with the same RSA key differ only in signer-name/-version."""
    unsigned = make_unsigned_fit(tmp_path / "fit")
    if external:
        subprocess.run(["mkimage", "-F", "-E", str(unsigned)], check=True, capture_output=True,
                       env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))
    soft_key = pem_key_pair(tmp_path / "keys")
    uri = import_rsa_key(token, soft_key, "dev")
    reference = tmp_path / "mkimage.itb"
    reference.write_bytes(unsigned.read_bytes())
    mkimage_ctl = empty_dtb(tmp_path / "mkimage-ctl.dtb")
    mkimage_sign(reference, tmp_path / "keys", mkimage_ctl, ("-E",) if external else ())

    key = token.open_key(uri)
    ours = sign_fit(unsigned.read_bytes(), key)
    sig = "/configurations/conf-1/signature-1"
    assert _differences(reference.read_bytes(), ours.blob) == {(sig, "signer-name"), (sig, "signer-version")}
    assert tree(ours.blob)[sig]["value"] == tree(reference.read_bytes())[sig]["value"]
    # Same growth passes, hence the same totalsize as mkimage for an embedded FIT. A packed
    # external-data FIT has the same strings block and a struct block 4 bytes longer: the
    # difference between "segway-sign\0" and "mkimage\0" padded to 4.
    ours_fdt, ref_fdt = libfdt.Fdt(bytearray(ours.blob)), libfdt.Fdt(bytearray(reference.read_bytes()))
    if external:
        assert ours_fdt.size_dt_struct() - ref_fdt.size_dt_struct() == 4
        assert ours_fdt.size_dt_strings() == ref_fdt.size_dt_strings()
    else:
        assert ours_fdt.totalsize() == ref_fdt.totalsize()
    # The public-key node we write is the one mkimage -K wrote, byte for byte.
    ours_ctl = add_pubkey(empty_dtb(tmp_path / "ctl.dtb").read_bytes(), key.public_key(), "dev", required="conf")
    assert ours_ctl == mkimage_ctl.read_bytes()
    # Each accepts the other's signature.
    verify_fit(reference.read_bytes(), ours_ctl)
    verify_fit(ours.blob, mkimage_ctl.read_bytes())
    # Only digests went to the token: one DigestInfo for one configuration signature.
    assert key.stats.sizes == [51]


def test_external_data_at_fixed_positions_stays_there(softhsm, tmp_path):
    """mkimage -E -p: data at absolute positions; the signed FIT keeps that layout and verifies."""
    unsigned = make_unsigned_fit(tmp_path / "fit")
    subprocess.run(["mkimage", "-F", "-E", "-p", "0x10000", str(unsigned)], check=True, capture_output=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    signed = sign_fit(unsigned.read_bytes(), key).blob
    before, after = tree(unsigned.read_bytes()), tree(signed)
    for image in ("kernel-1", "fdt-1", "ramdisk-1"):
        node = f"/images/{image}"
        assert "data" not in after[node]
        assert after[node]["data-position"] == before[node]["data-position"]
        pos = int.from_bytes(after[node]["data-position"], "big")
        size = int.from_bytes(after[node]["data-size"], "big")
        assert signed[pos:pos + size] == unsigned.read_bytes()[pos:pos + size]
    ctl = add_pubkey(empty_dtb(tmp_path / "c.dtb").read_bytes(), key.public_key(), "dev", required="conf")
    verify_fit(bytes(signed), ctl)


def test_input_is_not_modified_and_output_is_reproducible(softhsm, tmp_path):
    unsigned = make_unsigned_fit(tmp_path / "fit")
    before = unsigned.read_bytes()
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    first = sign_fit(before, key).blob
    assert unsigned.read_bytes() == before
    assert sign_fit(before, key).blob == first  # PKCS#1 v1.5 + SOURCE_DATE_EPOCH


def test_timestamp_honours_source_date_epoch(softhsm, tmp_path):
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    blob = sign_fit(make_unsigned_fit(tmp_path / "fit").read_bytes(), key).blob
    ts = tree(blob)["/configurations/conf-1/signature-1"]["timestamp"]
    assert int.from_bytes(ts, "big") == int(EPOCH)


@pytest.mark.parametrize("kind, algo, padding", [
    ("rsa3072", "sha384,rsa3072", None),
    ("rsa4096", "sha512,rsa4096", None),
    ("rsa2048", "sha256,rsa2048", "pss"),
    ("p256", "sha256,ecdsa256", None),
    ("p384", "sha384,ecdsa384", None),
])
def test_algorithms(token, tmp_path, kind, algo, padding):
    unsigned = make_unsigned_fit(tmp_path / "fit", algo=algo, padding=padding)
    key = token.open_key(token.generate(kind, "dev"))
    signed = sign_fit(unsigned.read_bytes(), key)
    ctl = add_pubkey(empty_dtb(tmp_path / "c.dtb").read_bytes(), key.public_key(), "dev", algo, "conf")
    verify_fit(signed.blob, ctl)
    value = tree(signed.blob)["/configurations/conf-1/signature-1"]["value"]
    expected = key.key_size // 8 if kind.startswith("rsa") else 2 * key.key_size // 8
    assert len(value) == expected  # ECDSA as raw r||s, each padded to the curve size


def test_pss_verifies_with_openssl(softhsm, tmp_path):
    """An independent check: openssl verifies the PSS value over the regions U-Boot hashes."""
    from segway_sign.formats.fit.verify import config_digest
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    blob = sign_fit(make_unsigned_fit(tmp_path / "fit", padding="pss").read_bytes(), key).blob
    fdt = open_fdt(blob)
    digest = config_digest(fdt, blob, "conf-1", "/configurations/conf-1/signature-1", "sha256")
    (tmp_path / "sig").write_bytes(tree(blob)["/configurations/conf-1/signature-1"]["value"])
    (tmp_path / "digest").write_bytes(digest)
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.PEM,
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.SubjectPublicKeyInfo))
    res = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
                          "-in", str(tmp_path / "digest"), "-sigfile", str(tmp_path / "sig"),
                          "-pkeyopt", "digest:sha256", "-pkeyopt", "rsa_padding_mode:pss",
                          "-pkeyopt", "rsa_pss_saltlen:32"], capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_adds_signature_nodes_covering_every_referenced_image(softhsm, tmp_path):
    unsigned = make_unsigned_fit(tmp_path / "fit", signature=False)
    key = softhsm.open_key(softhsm.generate("rsa2048", "fit-key"))
    signed = sign_fit(unsigned.read_bytes(), key, key_name_hint="dev", image_signatures=True)
    t = tree(signed.blob)
    node = t["/configurations/conf-1/signature-1"]
    assert node["sign-images"] == b"kernel\0fdt\0ramdisk\0"
    assert node["key-name-hint"] == b"dev\0"
    assert b"/images/ramdisk-1/hash-2" in node["hashed-nodes"]
    assert all(f"/images/{i}/signature-1" in t for i in ("kernel-1", "fdt-1", "ramdisk-1"))
    ctl = empty_dtb(tmp_path / "ctl.dtb").read_bytes()
    verify_fit(signed.blob, add_pubkey(ctl, key.public_key(), "dev", required="conf"))
    verify_fit(signed.blob, add_pubkey(ctl, key.public_key(), "dev", required="image"))


def test_adds_hash_nodes_where_missing(softhsm, tmp_path):
    blob = make_unsigned_fit(tmp_path / "fit").read_bytes()
    fdt = libfdt.Fdt(bytearray(blob))
    fdt.del_node(fdt.path_offset("/images/fdt-1/hash-1"))
    fdt.pack()
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    signed = sign_fit(bytes(fdt.as_bytearray()), key).blob
    t = tree(signed)
    assert t["/images/fdt-1/hash-1"]["algo"] == b"sha256\0" and len(t["/images/fdt-1/hash-1"]["value"]) == 32
    assert b"/images/fdt-1/hash-1" in t["/configurations/conf-1/signature-1"]["hashed-nodes"]
    ctl = add_pubkey(empty_dtb(tmp_path / "c.dtb").read_bytes(), key.public_key(), "dev", required="conf")
    verify_fit(signed, ctl)


def test_refuses_partial_sign_images(softhsm, tmp_path):
    """U-Boot >= 2026.04 (and Debian's patched 2023.01) would refuse it; so do we, before signing."""
    unsigned = make_unsigned_fit(tmp_path / "fit", sign_images='"kernel", "fdt"')
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    with pytest.raises(InputError, match="ramdisk-1.*sign-images"):
        sign_fit(unsigned.read_bytes(), key)
    assert key.stats.calls == 0


def test_wrong_key_type_for_algo(softhsm, tmp_path):
    unsigned = make_unsigned_fit(tmp_path / "fit", algo="sha256,rsa4096")
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    with pytest.raises(UsageError, match="does not fit the key"):
        sign_fit(unsigned.read_bytes(), key)


def test_unknown_config(softhsm, tmp_path):
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    with pytest.raises(UsageError, match="no configuration conf-9"):
        sign_fit(make_unsigned_fit(tmp_path / "fit").read_bytes(), key, configs=["conf-9"])


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b[:100], "truncated"),
    (lambda b: b"\0\0\0\0" + b[4:], "magic"),
    (lambda b: b"", "shorter than an FDT header"),
    (lambda b: b[:40] + b"\xff" * (len(b) - 40), "malformed"),
])
def test_malformed_input(softhsm, tmp_path, mangle, message):
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    blob = make_unsigned_fit(tmp_path / "fit").read_bytes()
    with pytest.raises(SegwayError, match=message):
        sign_fit(mangle(blob), key)


def test_refuses_unit_addresses(softhsm, tmp_path):
    blob = make_unsigned_fit(tmp_path / "fit").read_bytes()
    fdt = libfdt.Fdt(bytearray(blob))
    fdt.set_name(fdt.path_offset("/images/fdt-1"), "fdt@1")
    key = softhsm.open_key(softhsm.generate("rsa2048", "dev"))
    with pytest.raises(InputError, match="unit address"):
        sign_fit(bytes(fdt.as_bytearray()), key)


@pytest.fixture(scope="module")
def signed_pair(tmp_path_factory):
    """A FIT signed with a software key (signature format is independent of the key store)."""
    tmp = tmp_path_factory.mktemp("pair")
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    key = rsa.generate_private_key(65537, 2048)
    signed = sign_fit(make_unsigned_fit(tmp / "fit").read_bytes(), key).blob
    ctl = add_pubkey(empty_dtb(tmp / "ctl.dtb").read_bytes(), key.public_key(), "dev", required="conf")
    return signed, ctl


@pytest.mark.parametrize("attack", fit_attacks.ATTACKS, ids=lambda a: a.name)
def test_host_verifier_refuses_every_attack(signed_pair, attack):
    signed, ctl = signed_pair
    verify_fit(signed, ctl)
    with pytest.raises(SegwayError):
        verify_fit(attack.apply(signed), ctl, attack.conf)


def test_host_verifier_refuses_unsigned_and_foreign_keys(signed_pair, tmp_path):
    signed, ctl = signed_pair
    with pytest.raises(VerificationError, match="unsigned"):
        verify_fit(fit_attacks.unsigned_copy(signed), ctl)
    other = rsa.generate_private_key(65537, 2048)
    other_ctl = add_pubkey(empty_dtb(tmp_path / "o.dtb").read_bytes(), other.public_key(), "dev", required="conf")
    with pytest.raises(VerificationError, match="does not verify"):
        verify_fit(signed, other_ctl)


def test_key_node_round_trip(tmp_path):
    key = rsa.generate_private_key(65537, 3072)
    dtb = add_pubkey(empty_dtb(tmp_path / "c.dtb").read_bytes(), key.public_key(), "prod", required="image")
    fdt = open_fdt(dtb)
    assert public_key_from_node(fdt, "/signature/key-prod").public_numbers() == key.public_key().public_numbers()
    node = tree(dtb)["/signature/key-prod"]
    assert node["required"] == b"image\0" and node["algo"] == b"sha256,rsa3072\0"
    assert node["rsa,r-squared"] == pow(2, 2 * 3072, key.public_key().public_numbers().n).to_bytes(384, "big")
