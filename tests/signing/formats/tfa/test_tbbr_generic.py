"""TF-A's generic TBBR chain of trust (PLAT=qemu, i.MX8M): certificates compared byte for byte (TBS)
with those Debian's cert_create makes from the same key files, signed with SoftHSM keys, packed and
listed by fiptool, walked by a chain check written here from drivers/auth/tbbr/tbbr_cot_*.c, and
every tampering refused."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.helpers import open_token_key
from segway_sign.errors import InputError, UsageError, VerificationError
from segway_sign.formats.tfa import fip, tbbr

ARM = "1.3.6.1.4.1.4128.2100."
ROLES = ["rot", "trusted_world", "non_trusted_world", "soc_fw_content", "tos_fw_content", "nt_fw_content"]
REQUIRED = ["tb_fw", "soc_fw", "tos_fw", "nt_fw"]
OPTIONAL = ["tb_fw_config", "hw_config", "fw_config", "soc_fw_config", "tos_fw_extra1", "tos_fw_extra2",
            "tos_fw_config", "nt_fw_config"]
# cert_create's output option -> our certificate name (TF-A's build calls them tb_fw.crt ... nt_fw_content.crt)
CERT_OPTIONS = {
    "tb-fw-cert": "tb_fw_cert", "trusted-key-cert": "trusted_key_cert", "soc-fw-key-cert": "soc_fw_key_cert",
    "soc-fw-cert": "soc_fw_content_cert", "tos-fw-key-cert": "tos_fw_key_cert", "tos-fw-cert": "tos_fw_content_cert",
    "nt-fw-key-cert": "nt_fw_key_cert", "nt-fw-cert": "nt_fw_content_cert",
}
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def run(*args, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def opt(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.fixture
def images() -> dict[str, bytes]:
    return {name: os.urandom(2000 + 31 * i) for i, name in enumerate(REQUIRED + OPTIONAL)}


def software_keys(kind: str = "p256") -> dict:
    if kind == "p256":
        return {role: ec.generate_private_key(ec.SECP256R1()) for role in ROLES}
    return {role: rsa.generate_private_key(public_exponent=65537, key_size=2048) for role in ROLES}


def others(keys: dict) -> dict:
    return {r: k for r, k in keys.items() if r != "rot"}


def verify_sig(public_key, cert: x509.Certificate) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, PSS, hashes.SHA256())
    else:
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def walk_chain(certs: dict[str, bytes], images: dict[str, bytes], rot_public) -> None:
    """The generic chain, checked independently of segway_sign.formats.tfa.tbbr: the ROTPK signs
    tb_fw_cert and trusted_key_cert; each other certificate is checked with the key its parent carries."""
    parsed = {n: x509.load_der_x509_certificate(d) for n, d in certs.items()}

    def check(name, key):
        cert = parsed[name]
        assert cert.issuer == cert.subject
        verify_sig(key, cert)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert cert.public_key().public_bytes(*spki) == key.public_bytes(*spki)
        return cert

    def carried(cert, oid):
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(ARM + oid))
        assert ext.critical
        return serialization.load_der_public_key(ext.value.value)

    def hashed(cert, oid, data):
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(ARM + oid))
        assert ext.critical
        prefix = bytes.fromhex("3031300d060960864801650304020105000420")
        assert ext.value.value == prefix + (hashlib.sha256(data).digest() if data is not None else bytes(32))

    tb = check("tb_fw_cert", rot_public)
    for oid, name in (("201", "tb_fw"), ("202", "tb_fw_config"), ("203", "hw_config"), ("204", "fw_config")):
        hashed(tb, oid, images.get(name))
    tk = check("trusted_key_cert", rot_public)
    socc = check("soc_fw_content_cert", carried(check("soc_fw_key_cert", carried(tk, "302")), "501"))
    hashed(socc, "603", images["soc_fw"])
    hashed(socc, "604", images.get("soc_fw_config"))
    tosc = check("tos_fw_content_cert", carried(check("tos_fw_key_cert", carried(tk, "302")), "901"))
    for oid, name in (("1001", "tos_fw"), ("1002", "tos_fw_extra1"), ("1003", "tos_fw_extra2"),
                      ("1004", "tos_fw_config")):
        hashed(tosc, oid, images.get(name))
    ntc = check("nt_fw_content_cert", carried(check("nt_fw_key_cert", carried(tk, "303")), "1101"))
    hashed(ntc, "1201", images["nt_fw"])
    hashed(ntc, "1202", images.get("nt_fw_config"))


# ---------------------------------------------------------------------------------------------
# The same TBS bytes as cert_create


def write_keys(tmp_path: Path, kind: str) -> tuple[dict, dict[str, Path]]:
    keys = software_keys(kind)
    paths = {}
    for role, key in keys.items():
        paths[role] = tmp_path / f"{role}.pem"
        paths[role].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return keys, paths


def cert_create(tmp_path: Path, kind: str, key_paths: dict[str, Path], images: dict[str, bytes],
                tfw: int, ntfw: int) -> dict[str, bytes]:
    """cert_create with every key from a file (no -n) and the images given; the certificates by our name.
    Run again if its certificates straddle a second (ours share one notBefore)."""
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    args = ["cert_create", "--key-alg", "ecdsa" if kind == "p256" else "rsa", "--hash-alg", "sha256",
            "--tfw-nvctr", str(tfw), "--ntfw-nvctr", str(ntfw)]
    if kind != "p256":
        args += ["--key-size", "2048"]
    for role, path in key_paths.items():
        args += [f"--{tbbr.KEY_OPTIONS[role]}", str(path)]
    # Without -n, Debian's cert_create (2.8) loads every key of its CoT, the SCP key too, used or not.
    args += ["--scp-fw-key", str(key_paths["nt_fw_content"])]
    for name, data in images.items():
        (img_dir / name).write_bytes(data)
        args += [opt(name), str(img_dir / name)]
    for option in CERT_OPTIONS:
        args += [f"--{option}", str(tmp_path / f"{option}.crt")]
    for _ in range(5):
        run(*args)
        out = {name: (tmp_path / f"{option}.crt").read_bytes() for option, name in CERT_OPTIONS.items()}
        starts = {x509.load_der_x509_certificate(d).not_valid_before_utc for d in out.values()}
        if len(starts) == 1:
            return out
    raise AssertionError("cert_create's certificates kept straddling a second")


@pytest.mark.parametrize("kind", ["p256", "rsa2048"])
@pytest.mark.parametrize("optional", ["all", "none"])
def test_tbs_bytes_match_cert_create(kind, optional, images, tmp_path):
    if optional == "none":
        images = {n: images[n] for n in REQUIRED}
    keys, paths = write_keys(tmp_path, kind)
    ref = cert_create(tmp_path, kind, paths, images, 3, 5)
    ref_parsed = {n: x509.load_der_x509_certificate(d) for n, d in ref.items()}
    serials = iter([ref_parsed[spec.name].serial_number for spec in tbbr.GENERIC.certs])
    chain = dataclasses.replace(tbbr.GENERIC, serial=lambda: next(serials))
    start = next(iter(ref_parsed.values())).not_valid_before_utc
    ours = tbbr.build_chain(chain, images, keys, tfw_nvctr=3, ntfw_nvctr=5, not_before=start)
    assert list(ours) == list(CERT_OPTIONS.values())
    for name, der in ours.items():
        mine, theirs = asn1_x509.Certificate.load(der), asn1_x509.Certificate.load(ref[name])
        assert mine["tbs_certificate"].dump() == theirs["tbs_certificate"].dump(), name
        assert mine["signature_algorithm"].dump() == theirs["signature_algorithm"].dump(), name
    # Both sets verify under the same walk (signatures are randomised, so only the TBS can match).
    walk_chain(ours, images, keys["rot"].public_key())
    walk_chain(ref, images, keys["rot"].public_key())
    # And our verifier takes cert_create's chain as it takes its own.
    for certs in (ours, ref):
        report = tbbr.verify_chain(tbbr.GENERIC, certs, images, rot_public_key=keys["rot"].public_key())
        assert report["nv_counters"] == {"trusted_nvctr": 3, "non_trusted_nvctr": 5}


def test_serial_rule_is_cert_create_s():
    """BN_rand(64 bits, top bit set): a 9-byte DER INTEGER (leading zero), like every cert_create serial."""
    for _ in range(50):
        serial = tbbr.cert_create_serial()
        assert serial >> 63 == 1 and serial < 1 << 64


# ---------------------------------------------------------------------------------------------
# Signing with token keys; the FIP fiptool reads


def unsigned_fip(tmp_path: Path, images: dict[str, bytes]) -> bytes:
    args = ["fiptool", "create"]
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        args += [opt(name), str(tmp_path / name)]
    run(*args, str(tmp_path / "unsigned.fip"))
    return (tmp_path / "unsigned.fip").read_bytes()


def token_keys(tok) -> dict:
    return {role: open_token_key(tok, tok.generate("p256", f"fip-{role}")) for role in ROLES}


def test_sign_with_token_keys_and_fiptool_info(softhsm, images, tmp_path):
    keys = token_keys(softhsm)
    signed, certs = fip.sign(unsigned_fip(tmp_path, images), keys["rot"], cot="generic", keys=others(keys),
                             tfw_nvctr=1, ntfw_nvctr=1)
    (tmp_path / "signed.fip").write_bytes(signed)
    info = run("fiptool", "info", str(tmp_path / "signed.fip")).stdout
    for name in [*images, *CERT_OPTIONS]:
        assert f'cmdline="{opt(name)}"' in info, name
    assert len(info.strip().splitlines()) == len(images) + 8
    outdir = tmp_path / "unpacked"
    outdir.mkdir()
    run("fiptool", "unpack", "--out", str(outdir), str(tmp_path / "signed.fip"))
    for name, data in images.items():
        assert (outdir / f"{name.replace('_', '-')}.bin").read_bytes() == data
    unpacked = {cert: (outdir / f"{option}.bin").read_bytes() for option, cert in CERT_OPTIONS.items()}
    assert unpacked == certs
    walk_chain(unpacked, images, keys["rot"].public_key())

    rot_spki = keys["rot"].public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    report = fip.verify(signed, cot="generic", rot_pkh=hashlib.sha256(rot_spki).digest())
    assert report["rot_pkh"] == hashlib.sha256(rot_spki).hexdigest()
    assert report["unauthenticated"] == [] and report["cot"] == "generic"
    assert set(report["images"]) == set(images)
    assert report["keys"]["soc_fw_content"] == hashlib.sha256(keys["soc_fw_content"].public_der).hexdigest()


def test_rsa_keys(images, tmp_path):
    keys = software_keys("rsa2048")
    signed, certs = fip.sign_images(images, keys["rot"], cot="generic", keys=others(keys))
    walk_chain(certs, images, keys["rot"].public_key())
    fip.verify(signed, cot="generic", rot_public_key=keys["rot"].public_key())


def test_stm32_chain_does_not_verify_as_generic(images, tmp_path):
    keys = software_keys()
    stm32_images = {n: images[n] for n in ("tos_fw", "nt_fw")}
    signed, _ = fip.sign_images(stm32_images, keys["rot"])
    with pytest.raises(VerificationError, match="missing certificate"):
        fip.verify(signed, cot="generic")


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.fixture(scope="module")
def signed_generic():
    imgs = {name: os.urandom(1500 + 7 * i) for i, name in enumerate(REQUIRED + ["tos_fw_extra1", "nt_fw_config"])}
    keys = software_keys()
    signed, certs = fip.sign_images(imgs, keys["rot"], cot="generic", keys=others(keys))
    return keys, imgs, signed, certs


def replace_entry(signed: bytes, name: str, data: bytes | None) -> bytes:
    parsed = fip.parse(signed)
    entries = []
    for e in parsed.entries:
        if e.name == name:
            if data is None:
                continue
            e = fip.Entry(e.uuid, data)
        entries.append(e)
    return fip.pack(fip.Fip(entries))


def flip(data: bytes, where: int) -> bytes:
    out = bytearray(data)
    out[where] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("image", REQUIRED + ["tos_fw_extra1", "nt_fw_config"])
def test_flipped_image_byte_refused(image, signed_generic):
    keys, imgs, signed, _ = signed_generic
    tampered = replace_entry(signed, image, flip(imgs[image], len(imgs[image]) // 3))
    with pytest.raises(VerificationError, match="does not match"):
        fip.verify(tampered, cot="generic", rot_public_key=keys["rot"].public_key())


@pytest.mark.parametrize("cert", list(CERT_OPTIONS.values()))
def test_flipped_signature_refused(cert, signed_generic):
    keys, _, signed, certs = signed_generic
    der = certs[cert]
    tampered = replace_entry(signed, fip.CERT_ENTRIES_BY_COT["generic"][cert], flip(der, len(der) - 5))
    with pytest.raises(VerificationError, match="signature"):
        fip.verify(tampered, cot="generic", rot_public_key=keys["rot"].public_key())


@pytest.mark.parametrize("cert", list(CERT_OPTIONS.values()))
def test_signature_bit_string_with_unused_bits_refused(cert, images):
    """A signatureValue declaring 1 unused bit (the fuzz run's fip.bin: bit-flip 0x4ab2.0, there in
    STM32MP1's chain): cryptography reads the same signature, BL1/BL2 refuse it."""
    from tests.signing.formats.tfa.test_fip import with_unused_bit
    keys = software_keys()
    for _ in range(40):  # a signature ending in a 0 bit: one in two
        signed, certs = fip.sign_images(images, keys["rot"], cot="generic", keys=others(keys))
        tampered = with_unused_bit(certs[cert])
        if tampered is not None:
            break
    else:
        pytest.fail("no signature ending in a 0 bit in 40 signings")
    tampered_fip = replace_entry(signed, fip.CERT_ENTRIES_BY_COT["generic"][cert], tampered)
    with pytest.raises(VerificationError, match=f"{cert} signature BIT STRING declares unused bits"):
        fip.verify(tampered_fip, cot="generic", rot_public_key=keys["rot"].public_key())


@pytest.mark.parametrize("cert", ["soc_fw_content_cert", "tos_fw_content_cert", "nt_fw_content_cert"])
def test_content_certificate_of_another_key_refused(cert, signed_generic):
    """A content certificate made (correctly, same images) under another content key."""
    keys, imgs, signed, _ = signed_generic
    other = {**keys, f"{cert[:-len('_content_cert')]}_content": ec.generate_private_key(ec.SECP256R1())}
    _, foreign = fip.sign_images(imgs, other["rot"], cot="generic", keys=others(other))
    tampered = replace_entry(signed, fip.CERT_ENTRIES_BY_COT["generic"][cert], foreign[cert])
    with pytest.raises(VerificationError, match=f"{cert} subject key is not the key its parent authorises"):
        fip.verify(tampered, cot="generic", rot_public_key=keys["rot"].public_key())


def test_chain_resigned_with_another_rot_key_refused(signed_generic):
    keys, imgs, signed, _ = signed_generic
    other = {**keys, "rot": ec.generate_private_key(ec.SECP256R1())}
    resigned, _ = fip.sign(signed, other["rot"], cot="generic", keys=others(other))
    with pytest.raises(VerificationError, match="not made for the given ROT key"):
        fip.verify(resigned, cot="generic", rot_public_key=keys["rot"].public_key())
    with pytest.raises(VerificationError, match="ROTPK hash"):
        fip.verify(resigned, cot="generic", rot_pkh=tbbr.rotpk_hash(keys["rot"].public_key()))
    # One certificate of the original chain mixed into the re-signed one.
    mixed = replace_entry(resigned, "tb_fw_cert", fip.parse(signed).by_name()["tb_fw_cert"])
    with pytest.raises(VerificationError):
        fip.verify(mixed, cot="generic")


@pytest.mark.parametrize("missing", ["tb_fw", "soc_fw", "tos_fw", "nt_fw", "tos_fw_extra1", "tb_fw_cert",
                                     "soc_fw_key_cert", "nt_fw_cert"])
def test_missing_entry_refused(missing, signed_generic):
    keys, _, signed, _ = signed_generic
    with pytest.raises(VerificationError, match="missing"):
        fip.verify(replace_entry(signed, missing, None), cot="generic", rot_public_key=keys["rot"].public_key())


def test_uncovered_entries_reported(signed_generic):
    keys, _, signed, _ = signed_generic
    parsed = fip.parse(signed)
    extra = fip.Fip(parsed.entries + [fip.Entry(fip.UUID_BYTES["stm32mp_cfg_cert"], b"x")])
    report = fip.verify(fip.pack(extra), cot="generic", rot_public_key=keys["rot"].public_key())
    assert report["unauthenticated"] == ["stm32mp_cfg_cert"]


def test_signing_refusals(images):
    keys = software_keys()
    with pytest.raises(UsageError, match="--soc-fw-key"):
        fip.sign_images(images, keys["rot"], cot="generic",
                        keys={r: k for r, k in others(keys).items() if r != "soc_fw_content"})
    mixed = {**others(keys), "nt_fw_content": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    with pytest.raises(UsageError, match="all be ECDSA or all RSA"):
        fip.sign_images(images, keys["rot"], cot="generic", keys=mixed)
    with pytest.raises(UsageError, match="P-256 or RSA"):
        fip.sign_images(images, ec.generate_private_key(ec.SECP384R1()), cot="generic", keys=others(keys))
    with pytest.raises(InputError, match="soc_fw"):
        fip.sign_images({n: d for n, d in images.items() if n != "soc_fw"}, keys["rot"], cot="generic",
                        keys=others(keys))
    with pytest.raises(UsageError, match="takes no --trusted-world-key"):
        fip.sign_images({"tos_fw": b"a", "nt_fw": b"b"}, keys["rot"], keys=others(keys))
    with pytest.raises(UsageError, match="unknown chain of trust"):
        fip.sign_images(images, keys["rot"], cot="tbbr", keys=others(keys))


def test_source_date_epoch(monkeypatch, images):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    keys = software_keys()
    certs = tbbr.build_chain(tbbr.GENERIC, {n: images[n] for n in REQUIRED}, keys)
    for der in certs.values():
        assert x509.load_der_x509_certificate(der).not_valid_before_utc == \
            datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)
