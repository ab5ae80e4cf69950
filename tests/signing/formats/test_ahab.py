"""AHAB container signing checked against NXP's SPSDK (nxpimage ahab export/verify/parse), srktool -a
and the AHAB signature-block parser shipped with Debian's imx-code-signing-tool.

SPSDK pins cryptography<50, so it lives in its own virtualenv (``.venv/oracle-spsdk``, spsdk==3.12.0)
and is run as a program. SPSDK 3.x reads only version-2 certificates (AHAB v2 containers); the version-0
SGK certificates of v1 containers (i.MX 8ULP/93) are checked with spsdk 2.2.1, a release that still
reads them, in ``.venv/oracle-spsdk-2.2``.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import REPO, open_token_key
from segway_sign.errors import InputError, UsageError, VerificationError
from segway_sign.formats import ahab
from segway_sign.formats.hab import pki as hab_pki


NXPIMAGE = Path(os.environ.get("SEGWAY_NXPIMAGE", REPO / ".venv" / "oracle-spsdk" / "bin" / "nxpimage"))
SIG_BLK_PARSER = Path("/usr/share/doc/imx-code-signing-tool/ahab_signature_block_parser/parse_sig_blk.py")
FAMILY = "mimx9352"
NXPIMAGE_V1CERT = Path(os.environ.get("SEGWAY_NXPIMAGE_V1CERT",
                                      REPO / ".venv" / "oracle-spsdk-2.2" / "bin" / "nxpimage"))
FAMILY_V1CERT = "mx93"  # spsdk 2.2's name for the same part
SIGNING_TIME = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def nxpimage() -> Path:
    if not NXPIMAGE.exists():
        pytest.fail(f"SPSDK oracle missing: python3 -m venv .venv/oracle-spsdk && "
                    f".venv/oracle-spsdk/bin/pip install spsdk==3.12.0 (looked for {NXPIMAGE})")
    return NXPIMAGE


@pytest.fixture(scope="module")
def nxpimage_v1cert() -> Path:
    if not NXPIMAGE_V1CERT.exists():
        pytest.fail(f"SPSDK 2.2 oracle missing: python3 -m venv .venv/oracle-spsdk-2.2 && "
                    f".venv/oracle-spsdk-2.2/bin/pip install spsdk==2.2.1 (looked for {NXPIMAGE_V1CERT})")
    return NXPIMAGE_V1CERT


def run_nxpimage(nxp: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(cwd), SPSDK_DEBUG_LOG_FILE=str(cwd / "spsdk.log"))
    return subprocess.run([str(nxp), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def spsdk_verify(nxp: Path, cwd: Path, binary: Path) -> subprocess.CompletedProcess:
    return run_nxpimage(nxp, "ahab", "verify", "-f", FAMILY, "-b", str(binary), "-p", cwd=cwd)


def keygen(kind: str):
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(65537, 2048)


def write_pub(path: Path, key) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def export_image(nxp: Path, root: Path, name: str, images: int = 2, signer_key=None, srk_keys=()) -> Path:
    """An AHAB image (one container, ``images`` executables) made by SPSDK; signed when keys are given."""
    entries = []
    for i in range(images):
        (root / f"app{i}.bin").write_bytes(os.urandom(40_000 + 4096 * i))
        entries.append({"image_path": f"app{i}.bin", "load_address": hex(0x2049A000 + 0x100000 * i),
                        "entry_point": hex(0x2049A000 + 0x100000 * i), "image_type": "executable",
                        "core_id": "cortex-a55", "hash_type": "sha256"})
    container = {"srk_set": "none", "used_srk_id": 0, "srk_revoke_mask": "0x00", "fuse_version": 0,
                 "sw_version": 0, "images": entries}
    if signer_key is not None:
        (root / "signer.pem").write_bytes(signer_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        container.update(srk_set="oem", signer="type=file;file_path=signer.pem",
                         srk_table={"flag_ca": False,
                                    "srk_array": [str(write_pub(root / f"srk{i}.pub", k)) for i, k in enumerate(srk_keys)]})
    config = {"family": FAMILY, "revision": "latest", "target_memory": "standard", "output": f"{name}.bin",
              "output_format": "bin", "containers": [{"container": container}]}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    res = run_nxpimage(nxp, "ahab", "export", "-c", f"{name}.yaml", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    return root / f"{name}.bin"


# ------------------------------------------------------------------------------------- SRK


@pytest.mark.parametrize("kind,digest", [("p256", "sha256"), ("p384", "sha384"), ("rsa2048", "sha256")])
def test_srk_table_and_hash_match_srktool(tmp_path, kind, digest):
    keys = [keygen(kind) for _ in range(4)]
    certs = []
    for i, k in enumerate(keys):
        cert = hab_pki.issue_certificate(k.public_key(), f"SRK{i + 1}", k, None, ca=True, serial=i + 1,
                                         not_before=SIGNING_TIME)
        certs.append(tmp_path / f"SRK{i + 1}_crt.pem")
        certs[-1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    subprocess.run(["srktool", "-a", "-s", digest, "-t", "table.bin", "-e", "fuse.bin",
                    "-c", ",".join(map(str, certs))], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    table = ahab.srk_table([k.public_key() for k in keys], ca=True, digest=digest)
    assert table == (tmp_path / "table.bin").read_bytes()
    assert ahab.srk_hash(table, "sha512") == (tmp_path / "fuse.bin").read_bytes()
    assert [r.public_key.public_numbers() for r in ahab.parse_srk_table(table)] == \
        [k.public_key().public_numbers() for k in keys]


def test_srk_table_errors():
    with pytest.raises(UsageError):
        ahab.srk_table([keygen("p256").public_key()] * 3)
    with pytest.raises(InputError):
        ahab.parse_srk_table(b"\xd7\x04\x00\x43")
    with pytest.raises(UsageError):
        ahab.fuse_prog_lines([0] * 8, "imx8qxp")
    assert ahab.fuse_prog_lines(list(range(8)), "imx93")[7] == "fuse prog -y 16 7 0x00000007"


# ------------------------------------------------------------------------------ signing


# SPSDK signs i.MX93 RSA containers with RSA-PSS (SRK algorithm 0x22); that is what it verifies too.
@pytest.mark.slow
@pytest.mark.parametrize("kind,srk_index,pss", [("p256", 0, False), ("rsa2048", 2, True), ("p384", 3, False)])
def test_signed_container_is_accepted_by_spsdk(tmp_path, nxpimage, kind, srk_index, pss):
    srk_keys = [keygen(kind) for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys], rsa_pss=pss)
    unsigned = export_image(nxpimage, tmp_path, "unsigned").read_bytes()
    signed, offsets = ahab.sign_image(unsigned, table, srk_index, srk_keys[srk_index])
    assert offsets == [0]
    out = tmp_path / "signed.bin"
    out.write_bytes(signed)
    res = spsdk_verify(nxpimage, tmp_path, out)
    assert res.returncode == 0 and "Overall  result: Succeeded" in res.stdout, res.stdout[-3000:]
    # SPSDK's parser reads it back: OEM SRK set, our SRK index, the four keys.
    res = run_nxpimage(nxpimage, "ahab", "parse", "-f", FAMILY, "-b", str(out), "-o", "parsed", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    parsed_cfg = next((tmp_path / "parsed").rglob("*.yaml")).read_text()
    assert re.search(r"srk_set:\s*oem", parsed_cfg), parsed_cfg
    assert re.search(rf"used_srk_id:\s*{srk_index}", parsed_cfg), parsed_cfg
    assert ahab.verify_container(signed, 0, table)["srk_index"] == srk_index
    if srk_index:
        return  # NXP's parse_sig_blk.py only records the first SRK (IndexError for any other index)
    # NXP's signature-block parser (Debian doc dir) extracts the same SRK table and SHA-512 SRK hash.
    res = subprocess.run(["python3", str(SIG_BLK_PARSER), str(out), "0"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "output" / "SRKTable.bin").read_bytes() == table
    assert (tmp_path / "output" / "SRKHash.bin").read_bytes() == ahab.srk_hash(table, "sha512")


def test_signed_range_is_byte_identical_to_spsdk(tmp_path, nxpimage):
    """SPSDK signs the same container with a file key: everything up to the signature is identical."""
    srk_keys = [keygen("p256") for _ in range(4)]
    reference = export_image(nxpimage, tmp_path, "ref", signer_key=srk_keys[0], srk_keys=srk_keys).read_bytes()
    unsigned = export_image(nxpimage, tmp_path, "unsigned").read_bytes()
    # Same image payloads in both (export_image writes new random apps each time): rebuild unsigned
    # from the reference's payload instead.
    c = ahab.parse_container(reference, 0)
    base = bytearray(unsigned)
    first = min(e.offset for e in c.images)
    base[first:] = reference[first:]
    base[16: 16 + 128 * len(c.images)] = reference[16: 16 + 128 * len(c.images)]
    table = ahab.srk_table([k.public_key() for k in srk_keys])
    signed = ahab.sign_container(bytes(base), 0, table, 0, srk_keys[0])
    sig_start = c.sig_blk_offset + struct_sig_offset(reference, c)
    assert len(signed) == len(reference)
    assert signed[:sig_start + 8] == reference[:sig_start + 8]
    assert signed[sig_start + 8 + 64:] == reference[sig_start + 8 + 64:]


def struct_sig_offset(image: bytes, c: ahab.Container) -> int:
    return int.from_bytes(image[c.sig_blk_offset + 8 : c.sig_blk_offset + 10], "little")


@pytest.mark.slow
def test_tampered_container_is_refused(tmp_path, nxpimage):
    srk_keys = [keygen("p256") for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys])
    signed, _ = ahab.sign_image(export_image(nxpimage, tmp_path, "unsigned").read_bytes(), table, 0, srk_keys[0])
    c = ahab.parse_container(signed, 0)
    for where in (8, c.images[1].offset + 10):  # sw_version in the header; a byte of the second image
        bad = bytearray(signed)
        bad[where] ^= 0x01
        (tmp_path / "bad.bin").write_bytes(bad)
        res = spsdk_verify(nxpimage, tmp_path, tmp_path / "bad.bin")
        assert res.returncode != 0, res.stdout[-2000:]
        with pytest.raises(VerificationError):
            ahab.verify_container(bytes(bad), 0, table)


def test_refusals(tmp_path, nxpimage):
    srk_keys = [keygen("p256") for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys])
    unsigned = export_image(nxpimage, tmp_path, "unsigned", images=1).read_bytes()
    with pytest.raises(UsageError, match="not SRK 2"):
        ahab.sign_container(unsigned, 0, table, 1, srk_keys[0])
    nxp_signed = bytearray(unsigned)
    nxp_signed[4] = (nxp_signed[4] & ~3) | ahab.SRK_SET_NXP
    with pytest.raises(UsageError, match="signed by NXP"):
        ahab.sign_container(bytes(nxp_signed), 0, table, 0, srk_keys[0])
    with pytest.raises(InputError, match="no AHAB container to sign"):
        ahab.sign_image(bytes(nxp_signed), table, 0, srk_keys[0])
    with pytest.raises(InputError):
        ahab.sign_container(unsigned, 0x400, table, 0, srk_keys[0])
    bad_hash = bytearray(unsigned)
    bad_hash[ahab.parse_container(unsigned, 0).images[0].offset] ^= 1
    with pytest.raises(VerificationError, match="hash does not match"):
        ahab.sign_container(bytes(bad_hash), 0, table, 0, srk_keys[0])


@pytest.mark.slow
def test_sign_with_token_srk(token, tmp_path, nxpimage):
    uris = [token.generate("p256", f"AHAB-SRK{i}") for i in range(1, 5)]
    keys = [open_token_key(token, u) for u in uris]
    table = ahab.srk_table([k.public_key() for k in keys])
    signed, _ = ahab.sign_image(export_image(nxpimage, tmp_path, "unsigned").read_bytes(), table, 1, keys[1])
    (tmp_path / "signed.bin").write_bytes(signed)
    res = spsdk_verify(nxpimage, tmp_path, tmp_path / "signed.bin")
    assert res.returncode == 0, res.stdout[-3000:]


# ------------------------------------------------------------------------- SGK certificates


def spsdk_verify_sgk(nxp: Path, cwd: Path, binary: Path) -> subprocess.CompletedProcess:
    return run_nxpimage(nxp, "ahab", "verify", "-f", FAMILY_V1CERT, "-b", str(binary), cwd=cwd)


def assert_sgk_accepted(res: subprocess.CompletedProcess) -> None:
    """spsdk 2.2 verified the certificate against the SRK table and the container with the SGK."""
    out = res.stdout
    assert res.returncode == 0 and "Overall  result: Error" not in out, out[-4000:]
    assert "Signed source(Succeeded): Certificate image key" in out, out[-4000:]
    assert re.search(r"Certificate signature|Signed by SRK #\d", out), out[-4000:]
    assert "(Error)" not in out, out[-4000:]


def certificate_bytes(image: bytes) -> bytes:
    c = ahab.parse_container(image, 0)
    cert_off = int.from_bytes(image[c.sig_blk_offset + 4 : c.sig_blk_offset + 6], "little")
    start = c.sig_blk_offset + cert_off
    return image[start : start + int.from_bytes(image[start + 1 : start + 3], "little")]


@pytest.mark.slow
@pytest.mark.parametrize("kind,uuid", [("p256", None), ("p384", bytes(range(16)))])
def test_sgk_signed_container_is_accepted_by_spsdk(tmp_path, nxpimage, nxpimage_v1cert, kind, uuid):
    srk_keys, sgk = [keygen(kind) for _ in range(4)], keygen(kind)
    table = ahab.srk_table([k.public_key() for k in srk_keys], ca=True)
    unsigned = export_image(nxpimage, tmp_path, "unsigned").read_bytes()
    signed, _ = ahab.sign_image(unsigned, table, 1, srk_keys[1], sgk_key=sgk, sgk_uuid=uuid)
    out = tmp_path / "signed.bin"
    out.write_bytes(signed)
    assert_sgk_accepted(spsdk_verify_sgk(nxpimage_v1cert, tmp_path, out))
    report = ahab.verify_container(signed, 0, table)
    assert report["sgk"] and report["sgk_permissions"] == ["container"] and report["srk_index"] == 1
    assert report["sgk_uuid"] == (uuid.hex() if uuid else None)
    # spsdk's parser reads the certificate back: permissions, UUID and the SGK itself.
    res = run_nxpimage(nxpimage_v1cert, "ahab", "parse", "-f", FAMILY_V1CERT, "-b", str(out), "-o", "parsed",
                       cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    cert_cfg = yaml.safe_load((tmp_path / "parsed" / "certificate.yaml").read_text())
    assert cert_cfg["permissions"] == ["container"], cert_cfg
    assert (cert_cfg.get("uuid") or None) == (uuid.hex() if uuid else None), cert_cfg
    sgk_pub = serialization.load_pem_public_key((tmp_path / "parsed" / cert_cfg["public_key"]).read_bytes())
    assert sgk_pub.public_numbers() == sgk.public_key().public_numbers()
    if uuid is None:
        # NXP's own signature-block parser (Debian imx-code-signing-tool) finds the same certificate.
        res = subprocess.run(["python3", str(SIG_BLK_PARSER), str(out), "0"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert (tmp_path / "output" / "SGK_cert.bin").read_bytes() == certificate_bytes(signed)


@pytest.mark.slow
def test_sgk_tampering_is_refused(tmp_path, nxpimage, nxpimage_v1cert):
    srk_keys, sgk = [keygen("p256") for _ in range(4)], keygen("p256")
    table = ahab.srk_table([k.public_key() for k in srk_keys], ca=True)
    unsigned = export_image(nxpimage, tmp_path, "unsigned").read_bytes()
    signed, _ = ahab.sign_image(unsigned, table, 0, srk_keys[0], sgk_key=sgk)
    c = ahab.parse_container(signed, 0)
    cert = certificate_bytes(signed)
    cert_start = signed.index(cert)
    cert_sig = cert_start + len(cert) - 5           # a byte of the SRK's signature over the certificate
    cert_key = cert_start + 8 + 12 + 5              # a byte of the SGK's public key
    for where in (cert_sig, cert_key, 8, c.images[0].offset + 3):
        bad = bytearray(signed)
        bad[where] ^= 0x01
        (tmp_path / "bad.bin").write_bytes(bad)
        res = spsdk_verify_sgk(nxpimage_v1cert, tmp_path, tmp_path / "bad.bin")
        assert res.returncode != 0 or "Overall  result: Error" in res.stdout, (where, res.stdout[-3000:])
        with pytest.raises((VerificationError, InputError)):
            ahab.verify_container(bytes(bad), 0, table)
    # A certificate made by another key than the SRK the container names is refused too.
    other, _ = ahab.sign_image(unsigned, table, 0, srk_keys[0], sgk_key=sgk)
    forged = bytearray(other)
    forged_cert = ahab.sgk_certificate(sgk.public_key(), srk_keys[2], ahab.parse_srk_table(table)[2])
    forged[cert_start : cert_start + len(cert)] = forged_cert
    with pytest.raises(VerificationError, match="certificate signature"):
        ahab.verify_container(bytes(forged), 0, table)


def test_sgk_refusals(tmp_path, nxpimage):
    srk_keys = [keygen("p256") for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys], ca=True)
    unsigned = export_image(nxpimage, tmp_path, "unsigned", images=1).read_bytes()
    not_ca = ahab.srk_table([k.public_key() for k in srk_keys])
    with pytest.raises(UsageError, match="CA flag"):
        ahab.sign_container(unsigned, 0, not_ca, 0, srk_keys[0], sgk_key=keygen("p256"))
    with pytest.raises(UsageError, match="same kind"):
        ahab.sign_container(unsigned, 0, table, 0, srk_keys[0], sgk_key=keygen("p384"))
    rsa_keys = [keygen("rsa2048") for _ in range(4)]
    with pytest.raises(UsageError, match="EC keys only"):
        ahab.sign_container(unsigned, 0, ahab.srk_table([k.public_key() for k in rsa_keys], ca=True), 0, rsa_keys[0],
                            sgk_key=keygen("rsa2048"))
    with pytest.raises(UsageError, match="'container' permission"):
        ahab.sign_container(unsigned, 0, table, 0, srk_keys[0], sgk_key=keygen("p256"),
                            sgk_permissions=ahab.permission_bits(["soc-debug-domain-1"]))
    with pytest.raises(UsageError, match="UUID"):
        ahab.sign_container(unsigned, 0, table, 0, srk_keys[0], sgk_key=keygen("p256"), sgk_uuid=b"short")
    with pytest.raises(UsageError, match="unknown SGK certificate permission"):
        ahab.permission_bits(["everything"])
    signed = ahab.sign_container(unsigned, 0, table, 0, srk_keys[0], sgk_key=keygen("p256"))
    cert = bytearray(certificate_bytes(signed))
    cert[6] ^= 0xFF  # inverted permissions no longer the inverse
    with pytest.raises(VerificationError, match="inverse"):
        ahab.parse_certificate(bytes(cert))


@pytest.mark.slow
def test_sgk_from_token(token, tmp_path, nxpimage, nxpimage_v1cert):
    """SRKs and the SGK live in the token (SoftHSM directly and behind p11-kit)."""
    keys = [open_token_key(token, token.generate("p256", f"AHAB-SRK{i}")) for i in range(1, 5)]
    sgk = open_token_key(token, token.generate("p256", "AHAB-SGK"))
    table = ahab.srk_table([k.public_key() for k in keys], ca=True)
    unsigned = export_image(nxpimage, tmp_path, "unsigned").read_bytes()
    signed, _ = ahab.sign_image(unsigned, table, 2, keys[2], sgk_key=sgk)
    (tmp_path / "signed.bin").write_bytes(signed)
    assert_sgk_accepted(spsdk_verify_sgk(nxpimage_v1cert, tmp_path, tmp_path / "signed.bin"))
    assert ahab.verify_container(signed, 0, table)["srk_index"] == 2


# ------------------------------------------------------------- reserved and unsigned bytes


def reserved_offsets(image: bytes, c: ahab.Container) -> dict[int, str]:
    """Every reserved byte of the container header, signature block and image entries, and every
    byte after the signed part that is neither a signature nor a certificate, by file offset."""
    out = {c.offset + 14: "header reserved", c.offset + 15: "header reserved"}
    base = c.offset + c.sig_blk_offset
    out.update({base + 12 + i: "key identifier (no blob)" for i in range(4)})
    for e in c.images:
        entry = c.offset + 16 + e.index * ahab.IMAGE_ENTRY_SIZE
        digest = ahab.IMAGE_HASHES[e.hash_type]().digest_size
        out.update({entry + 32 + i: "image hash padding" for i in range(digest, 64)})
        out.update({entry + 96 + i: "image IV (not encrypted)" for i in range(32)})
        out.update({entry + 25: "image flags 15:8 (bits 14, 15 reserved)", entry + 27: "image flags 31:24"})
    sig = base + int.from_bytes(image[base + 8 : base + 10], "little")
    out.update({sig: "signature header version", **{sig + 4 + i: "signature header type/reserved" for i in range(4)}})
    cert_off = int.from_bytes(image[base + 4 : base + 6], "little")
    if cert_off:
        cert = base + cert_off
        csig = cert + int.from_bytes(image[cert + 4 : cert + 6], "little")
        out.update({csig: "certificate signature header version",
                    **{csig + 4 + i: "certificate signature header reserved" for i in range(4)}})
        end = cert + int.from_bytes(image[cert + 1 : cert + 3], "little")
    else:
        end = sig + int.from_bytes(image[sig + 1 : sig + 3], "little")
    out.update({i: "signature block padding" for i in range(end, c.offset + c.length)})
    return out


@pytest.mark.parametrize("sgk", [False, True], ids=["srk", "sgk"])
def test_no_byte_of_the_container_header_changes_unnoticed(tmp_path, nxpimage, sgk):
    """One image: the signature header's type/reserved bytes sit at 0x1dc-0x1df. Every reserved byte,
    and in fact every bit of the container header, must be refused when changed."""
    srk_keys = [keygen("p256") for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys], ca=sgk)
    unsigned = export_image(nxpimage, tmp_path, "unsigned", images=1).read_bytes()
    signed = ahab.sign_container(unsigned, 0, table, 0, srk_keys[0], sgk_key=keygen("p256") if sgk else None)
    c = ahab.parse_container(signed, 0)
    assert ahab.verify_container(signed, 0, table)["srk_index"] == 0
    reserved = reserved_offsets(signed, c)
    assert {0x1d8, 0x1dc, 0x1dd, 0x1de, 0x1df} <= set(reserved)
    for where, what in reserved.items():
        for value in (0x01, 0x10, 0x80):
            bad = bytearray(signed)
            bad[where] ^= value
            with pytest.raises((VerificationError, InputError)) as err:
                ahab.verify_image(bytes(bad), table)
            assert "\n" not in str(err.value), (hex(where), what)
    for where in range(c.length):  # without --srk-table: the signature alone must catch SRK table changes
        for bit in range(8):
            bad = bytearray(signed)
            bad[where] ^= 1 << bit
            with pytest.raises((VerificationError, InputError, UsageError)):
                ahab.verify_image(bytes(bad))
    # The good container still passes and SPSDK still reads it.
    (tmp_path / "signed.bin").write_bytes(signed)
    nxp = nxpimage_v1_or_current(sgk, nxpimage)
    res = run_nxpimage(nxp, "ahab", "parse", "-f", FAMILY_V1CERT if sgk else FAMILY, "-b", "signed.bin",
                       "-o", "parsed", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def nxpimage_v1_or_current(sgk: bool, current: Path) -> Path:
    if sgk and not NXPIMAGE_V1CERT.exists():
        pytest.fail(f"SPSDK 2.2 oracle missing (looked for {NXPIMAGE_V1CERT})")
    return NXPIMAGE_V1CERT if sgk else current


@pytest.mark.slow
def test_what_spsdk_refuses_in_the_signature_header_is_refused(tmp_path, nxpimage):
    """SPSDK 3.12 reads the byte after the signature tag as the signature type (0 SRK, 0x10 CMAC) and
    refuses other values and other header versions; it ignores the three bytes after the type. We
    refuse all of them but zero."""
    srk_keys = [keygen("p256") for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys])
    signed = ahab.sign_container(export_image(nxpimage, tmp_path, "unsigned", images=1).read_bytes(), 0, table, 0,
                                 srk_keys[0])
    assert signed[0x1db] == ahab.TAG_SIGNATURE
    for where, value, spsdk_accepts in ((0x1d8, 0x01, False), (0x1dc, 0x01, False), (0x1dc, 0x10, True),
                                        (0x1dd, 0x01, True), (0x1df, 0x80, True)):
        bad = bytearray(signed)
        bad[where] ^= value
        (tmp_path / "bad.bin").write_bytes(bad)
        res = spsdk_verify(nxpimage, tmp_path, tmp_path / "bad.bin")
        accepted = res.returncode == 0 and "Overall  result: Succeeded" in res.stdout
        assert accepted == spsdk_accepts, (hex(where), res.stdout[-2000:])
        with pytest.raises(VerificationError, match="signature structure version|type and reserved bytes"):
            ahab.verify_container(bytes(bad), 0, table)


def test_unsigned_container_is_refused_when_verifying_every_container(tmp_path, nxpimage):
    srk_keys = [keygen("p256") for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in srk_keys])
    signed = ahab.sign_container(export_image(nxpimage, tmp_path, "unsigned", images=1).read_bytes(), 0, table, 0,
                                 srk_keys[0])
    for flags in (ahab.SRK_SET_NONE, 3):
        bad = bytearray(signed)
        bad[4] = (bad[4] & ~3) | flags
        with pytest.raises(VerificationError, match="not signed"):
            ahab.verify_image(bytes(bad), table)
    nxp = bytearray(signed)
    nxp[4] = (nxp[4] & ~3) | ahab.SRK_SET_NXP
    with pytest.raises(UsageError, match="no OEM-signed"):
        ahab.verify_image(bytes(nxp), table)
