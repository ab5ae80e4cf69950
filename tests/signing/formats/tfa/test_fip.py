"""TF-A FIP + STM32MP1 TBBR certificates: packed and listed by Debian's fiptool, compared with the
certificates Debian's cert_create makes from file keys, and walked from the ROT key by a chain
check written here from fdts/stm32mp1-cot-descriptors.dtsi."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import open_token_key
from segway_sign.errors import InputError, UsageError, VerificationError
from segway_sign.formats.tfa import fip, tbbr

ARM = "1.3.6.1.4.1.4128.2100."
CFG_CERT_UUID = "501d8dd2-8bce-49a5-84eb-559a9f2eaeaf"
IMAGES = ["tos_fw", "tos_fw_extra1", "tos_fw_extra2", "nt_fw", "hw_config", "fw_config"]
# (FIP file name given to fiptool/cert_create, name in our chain)
CERT_FILES = {
    "trusted-key-cert": "trusted_key_cert", "tos-fw-key-cert": "tos_fw_key_cert",
    "tos-fw-cert": "tos_fw_content_cert", "nt-fw-key-cert": "nt_fw_key_cert", "nt-fw-cert": "nt_fw_content_cert",
}




def run(*args, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    out = {}
    for i, name in enumerate(IMAGES):
        out[name] = tmp_path / f"{name}.bin"
        out[name].write_bytes(os.urandom(3000 + 17 * i))
    return out


def unsigned_fip(tmp_path: Path, images: dict[str, Path]) -> bytes:
    """An unsigned FIP made by fiptool, as a TF-A build without certificates makes it."""
    out = tmp_path / "unsigned.fip"
    args = ["fiptool", "create"]
    for name, path in images.items():
        args += [f"--{name.replace('_', '-')}", str(path)]
    run(*args, str(out))
    return out.read_bytes()


def fiptool_unpack(tmp_path: Path, data: bytes) -> dict[str, bytes]:
    src, outdir = tmp_path / "to-unpack.fip", tmp_path / "unpacked"
    src.write_bytes(data)
    outdir.mkdir(exist_ok=True)
    run("fiptool", "unpack", "--force", "--out", str(outdir), str(src))
    return {p.stem: p.read_bytes() for p in outdir.iterdir()}


def ext_value(cert: x509.Certificate, oid: str) -> x509.Extension:
    return cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))


def walk_chain(certs: dict[str, bytes], images: dict[str, bytes], rot_public) -> None:
    """The STM32MP1 chain of trust, checked independently of segway_sign.formats.tfa.tbbr."""
    parsed = {n: x509.load_der_x509_certificate(d) for n, d in certs.items()}

    def check(name, key):
        cert = parsed[name]
        assert cert.issuer == cert.subject
        assert cert.public_key().public_numbers() == key.public_numbers()
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        return cert

    def carried(cert, oid):
        ext = ext_value(cert, ARM + oid)
        assert ext.critical
        return serialization.load_der_public_key(ext.value.value)

    def hashed(cert, oid, data):
        ext = ext_value(cert, ARM + oid)
        assert ext.critical
        expected = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"
        assert ext.value.value == expected + (hashlib.sha256(data).digest() if data is not None else bytes(32))

    cfg = check("stm32mp_cfg_cert", rot_public)
    hashed(cfg, "203", images["hw_config"])
    hashed(cfg, "204", images["fw_config"])
    trusted = check("trusted_key_cert", rot_public)
    tosk = check("tos_fw_key_cert", carried(trusted, "302"))
    tosc = check("tos_fw_content_cert", carried(tosk, "901"))
    for oid, name in (("1001", "tos_fw"), ("1002", "tos_fw_extra1"), ("1003", "tos_fw_extra2"),
                      ("1004", "tos_fw_config")):
        hashed(tosc, oid, images.get(name))
    ntk = check("nt_fw_key_cert", carried(trusted, "303"))
    ntc = check("nt_fw_content_cert", carried(ntk, "1101"))
    hashed(ntc, "1201", images["nt_fw"])


def certs_from_unpacked(unpacked: dict[str, bytes]) -> dict[str, bytes]:
    certs = {CERT_FILES[f]: unpacked[f] for f in CERT_FILES}
    certs["stm32mp_cfg_cert"] = unpacked[CFG_CERT_UUID.upper()]
    return certs


# ---------------------------------------------------------------------------------------------


def test_sign_fip_with_token_rot_key(token, images, tmp_path):
    uri = token.generate("p256", "rot")
    rot = open_token_key(token, uri)
    unsigned = unsigned_fip(tmp_path, images)
    signed, certs = fip.sign(unsigned, rot, tfw_nvctr=4, ntfw_nvctr=9)

    (tmp_path / "signed.fip").write_bytes(signed)
    info = run("fiptool", "info", str(tmp_path / "signed.fip")).stdout
    for cmdline in ["--tos-fw", "--tos-fw-extra1", "--tos-fw-extra2", "--nt-fw", "--hw-config", "--fw-config",
                    "--trusted-key-cert", "--tos-fw-key-cert", "--tos-fw-cert", "--nt-fw-key-cert",
                    "--nt-fw-cert"]:
        assert f'cmdline="{cmdline}"' in info, cmdline
    assert CFG_CERT_UUID.upper() in info
    assert len(info.strip().splitlines()) == 12

    unpacked = fiptool_unpack(tmp_path, signed)
    image_bytes = {n: p.read_bytes() for n, p in images.items()}
    for name, data in image_bytes.items():
        assert unpacked[name.replace("_", "-")] == data
    walk_chain(certs_from_unpacked(unpacked), image_bytes, rot.public_key())
    assert certs_from_unpacked(unpacked) == certs
    counters = {c: x509.load_der_x509_certificate(d) for c, d in certs.items()}
    assert ext_value(counters["trusted_key_cert"], ARM + "1").value.value == b"\x02\x01\x04"
    assert ext_value(counters["nt_fw_content_cert"], ARM + "2").value.value == b"\x02\x01\x09"

    report = fip.verify(signed, rot_public_key=rot.public_key())
    xy = rot.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)[1:]
    assert report["rot_pkh"] == hashlib.sha256(xy).hexdigest()
    assert report["nv_counters"] == {"trusted_nvctr": 4, "non_trusted_nvctr": 9}


def test_structure_matches_cert_create(images, tmp_path):
    """Same ROT key file and images: every certificate cert_create makes has our structure."""
    rot_pem = tmp_path / "rot.pem"
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(rot_pem))
    rot = serialization.load_pem_private_key(rot_pem.read_bytes(), None)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    args = ["cert_create", "-n", "--rot-key", str(rot_pem), "--tfw-nvctr", "3", "--ntfw-nvctr", "5",
            "--key-alg", "ecdsa", "--hash-alg", "sha256"]
    for name in ("tos_fw", "tos_fw_extra1", "tos_fw_extra2", "nt_fw"):
        args += [f"--{name.replace('_', '-')}", str(images[name])]
    for opt in CERT_FILES:
        args += [f"--{opt}", str(ref_dir / f"{opt}.crt")]
    run(*args)

    ours = tbbr.build_certificates({n: p.read_bytes() for n, p in images.items()}, rot,
                                   tfw_nvctr=3, ntfw_nvctr=5)
    for opt, name in CERT_FILES.items():
        ref = asn1_x509.Certificate.load((ref_dir / f"{opt}.crt").read_bytes())
        mine = asn1_x509.Certificate.load(ours[name])
        rt, mt = ref["tbs_certificate"], mine["tbs_certificate"]
        assert mt["version"].native == rt["version"].native == "v3"
        assert mt["signature"].dump() == rt["signature"].dump()  # ecdsa-with-SHA256, no params
        assert mt["subject"].dump() == rt["subject"].dump(), name
        assert mt["issuer"].dump() == rt["issuer"].dump() == rt["subject"].dump()
        assert mt["subject_public_key_info"]["algorithm"].dump() == rt["subject_public_key_info"]["algorithm"].dump()
        for t in (mt, rt):
            validity = t["validity"]
            span = validity["not_after"].native - validity["not_before"].native
            assert span == datetime.timedelta(days=7300)
            assert t["serial_number"].native > 0
        ref_exts = [(e["extn_id"].dotted, e["critical"].native) for e in rt["extensions"]]
        my_exts = [(e["extn_id"].dotted, e["critical"].native) for e in mt["extensions"]]
        assert my_exts == ref_exts, name
        for re_, me in zip(rt["extensions"], mt["extensions"]):
            oid = re_["extn_id"].dotted
            rv, mv = re_["extn_value"].contents, me["extn_value"].contents
            if oid in (ARM + "302", ARM + "303", ARM + "901", ARM + "1101"):
                assert mv[:27] == rv[:27] and len(mv) == len(rv)  # SPKI of a P-256 key, named curve
            elif oid == "2.5.29.14":  # SKI = SHA-1 of the subject key bits, as OpenSSL's "hash"
                key_bits = mt["subject_public_key_info"]["public_key"].contents[1:]
                assert mv == b"\x04\x14" + hashlib.sha1(key_bits).digest()
            elif oid == "2.5.29.35":  # AKI keyid only, = own SKI (self-signed)
                assert mv[:4] == rv[:4] == b"\x30\x16\x80\x14"
            else:  # counters, DigestInfo hashes (same images), basic constraints
                assert mv == rv, (name, oid)
        assert ref["signature_algorithm"].dump() == mine["signature_algorithm"].dump()
    # Same ROT key → the same subject key in the trusted key certificate.
    ref_tk = x509.load_der_x509_certificate((ref_dir / "trusted-key-cert.crt").read_bytes())
    assert ref_tk.public_key().public_numbers() == rot.public_key().public_numbers()
    # The STM32MP config certificate (not in Debian's generic cert_create): stm32mp1_tbb_cert.c.
    cfg = x509.load_der_x509_certificate(ours["stm32mp_cfg_cert"])
    assert cfg.subject.rfc4514_string() == "CN=STM32MP config FW Certificate"
    assert [e.oid.dotted_string for e in cfg.extensions][3:] == [ARM + "1", ARM + "203", ARM + "204"]


def test_openssl_parses_every_certificate(images, tmp_path):
    rot = ec.generate_private_key(ec.SECP256R1())
    certs = tbbr.build_certificates({n: p.read_bytes() for n, p in images.items()}, rot)
    for name, der in certs.items():
        path = tmp_path / f"{name}.der"
        path.write_bytes(der)
        text = run("openssl", "x509", "-inform", "DER", "-in", str(path), "-noout", "-text").stdout
        assert "ecdsa-with-SHA256" in text and "CA:FALSE" in text
        assert len(re.findall(r"1\.3\.6\.1\.4\.1\.4128\.2100\.\d+: critical", text)) >= 2


def test_sign_from_separate_images(images, tmp_path):
    rot = ec.generate_private_key(ec.SECP256R1())
    signed, certs = fip.sign_images({n: p.read_bytes() for n, p in images.items()}, rot)
    unpacked = fiptool_unpack(tmp_path, signed)
    walk_chain(certs_from_unpacked(unpacked), {n: p.read_bytes() for n, p in images.items()}, rot.public_key())


def test_optional_images_get_zero_hashes(images, tmp_path):
    rot = ec.generate_private_key(ec.SECP256R1())
    only = {n: images[n].read_bytes() for n in ("tos_fw", "nt_fw")}
    signed, certs = fip.sign_images(only, rot)
    walk_chain(certs, {**only, "hw_config": None, "fw_config": None}, rot.public_key())
    fip.verify(signed, rot_public_key=rot.public_key())


def test_resign_replaces_certificates(images, tmp_path):
    rot1, rot2 = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    first, _ = fip.sign(unsigned_fip(tmp_path, images), rot1)
    second, _ = fip.sign(first, rot2, tfw_nvctr=1)
    assert len(fip.parse(second).entries) == 12
    fip.verify(second, rot_public_key=rot2.public_key())
    with pytest.raises(VerificationError):
        fip.verify(second, rot_public_key=rot1.public_key())


def test_source_date_epoch(images, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    rot = ec.generate_private_key(ec.SECP256R1())
    certs = tbbr.build_certificates({"tos_fw": b"a", "nt_fw": b"b"}, rot)
    for der in certs.values():
        cert = x509.load_der_x509_certificate(der)
        assert cert.not_valid_before_utc == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.fixture
def signed_fip(images, tmp_path):
    rot = ec.generate_private_key(ec.SECP256R1())
    signed, _ = fip.sign(unsigned_fip(tmp_path, images), rot)
    return rot, signed


@pytest.mark.parametrize("entry", IMAGES)
def test_tampered_image_refused(entry, signed_fip, tmp_path):
    rot, signed = signed_fip
    path = tmp_path / "s.fip"
    path.write_bytes(signed)
    (tmp_path / "evil.bin").write_bytes(b"evil")
    run("fiptool", "update", f"--{entry.replace('_', '-')}", str(tmp_path / "evil.bin"), str(path))
    with pytest.raises(VerificationError, match="does not match"):
        fip.verify(path.read_bytes(), rot_public_key=rot.public_key())


@pytest.mark.parametrize("cert", sorted(fip.CERT_BY_ENTRY))
def test_tampered_certificate_refused(cert, signed_fip):
    rot, signed = signed_fip
    parsed = fip.parse(signed)
    entries = []
    for e in parsed.entries:
        if e.name == cert:
            data = bytearray(e.data)
            data[len(data) // 2] ^= 0x01
            e = fip.Entry(e.uuid, bytes(data))
        entries.append(e)
    with pytest.raises(VerificationError):
        fip.verify(fip.pack(fip.Fip(entries)), rot_public_key=rot.public_key())


def with_unused_bit(der: bytes) -> bytes | None:
    """The certificate with its signatureValue BIT STRING declaring 1 unused bit, or None when its
    signature's last bit is 1 (then the encoding would be invalid anyway). cryptography reads it as
    the same signature; TF-A's mbedtls_asn1_get_bitstring_null refuses any unused bits."""
    signature = x509.load_der_x509_certificate(der).signature
    if signature[-1] & 1:
        return None
    pos = len(der) - len(signature) - 1  # the BIT STRING's unused-bits byte
    assert der[pos] == 0
    tampered = der[:pos] + b"\x01" + der[pos + 1:]
    assert x509.load_der_x509_certificate(tampered).signature == signature  # what made it pass
    return tampered


@pytest.mark.parametrize("cert", sorted(fip.CERT_BY_ENTRY))
def test_signature_bit_string_with_unused_bits_refused(cert, images, tmp_path):
    """The long fuzz run's accepted case (fip.bin: bit-flip 0x4ab2.0): the unused-bits byte of
    stm32mp_cfg_cert's signatureValue set to 1, which BL2 refuses; every certificate of the chain."""
    unsigned = unsigned_fip(tmp_path, images)
    for _ in range(40):  # a signature ending in a 0 bit: one in two
        rot = ec.generate_private_key(ec.SECP256R1())
        signed, _ = fip.sign(unsigned, rot)
        parsed = fip.parse(signed)
        tampered = with_unused_bit(parsed.by_name()[cert])
        if tampered is not None:
            break
    else:
        pytest.fail("no signature ending in a 0 bit in 40 signings")
    entries = [fip.Entry(e.uuid, tampered) if e.name == cert else e for e in parsed.entries]
    with pytest.raises(VerificationError, match=f"{fip.CERT_BY_ENTRY[cert]} signature BIT STRING declares unused bits"):
        fip.verify(fip.pack(fip.Fip(entries)), rot_public_key=rot.public_key())


def test_wrong_rot_or_pkh_refused(signed_fip):
    rot, signed = signed_fip
    with pytest.raises(VerificationError, match="ROT"):
        fip.verify(signed, rot_public_key=ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(VerificationError, match="PKH"):
        fip.verify(signed, rot_pkh=bytes(32))
    xy = rot.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)[1:]
    fip.verify(signed, rot_pkh=hashlib.sha256(xy).digest())


def test_missing_certificate_refused(signed_fip):
    rot, signed = signed_fip
    parsed = fip.parse(signed)
    kept = [e for e in parsed.entries if e.name != "nt_fw_cert"]
    with pytest.raises(VerificationError, match="missing"):
        fip.verify(fip.pack(fip.Fip(kept)), rot_public_key=rot.public_key())


def test_bad_fip_inputs(signed_fip, images, tmp_path):
    rot, signed = signed_fip
    cases = {"empty": b"", "not a fip": b"\x00" * 100, "truncated toc": signed[:50],
             "truncated data": signed[: len(signed) - 10]}
    for name, data in cases.items():
        with pytest.raises(InputError) as err:
            fip.sign(data, rot)
        assert "\n" not in str(err.value), name
    without_bl32 = {n: p.read_bytes() for n, p in images.items() if n != "tos_fw"}
    with pytest.raises(InputError, match="tos_fw"):
        fip.sign_images(without_bl32, rot)
    with pytest.raises(UsageError, match="unknown"):
        fip.sign_images({"bl99": b"x"}, rot)


@pytest.mark.parametrize("make", [
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
])
def test_rot_key_must_be_p256(make):
    with pytest.raises(UsageError, match="P-256"):
        tbbr.build_certificates({"tos_fw": b"a", "nt_fw": b"b"}, make())


def test_nv_counter_range():
    rot = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UsageError):
        tbbr.build_certificates({"tos_fw": b"a", "nt_fw": b"b"}, rot, tfw_nvctr=-1)


def test_entries_outside_the_chain_are_reported(images, tmp_path):
    rot = ec.generate_private_key(ec.SECP256R1())
    extra = {**{n: p.read_bytes() for n, p in images.items()}, "soc_fw_config": b"not covered"}
    signed, _ = fip.sign_images(extra, rot)
    assert fip.verify(signed, rot_public_key=rot.public_key())["unauthenticated"] == ["soc_fw_config"]
