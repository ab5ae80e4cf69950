"""HABv4 signing checked against NXP's tools from Debian (srktool, cst, csf_parser), openssl cms and
U-Boot's mkimage (which builds the u-boot.imx / flash.bin inputs and prints their HAB blocks)."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import open_token_key
from segway_sign.errors import InputError, UsageError, VerificationError
from segway_sign.formats.hab import csf as hab_csf
from segway_sign.formats.hab import image as hab
from segway_sign.formats.hab import pki as hab_pki
from segway_sign.formats.hab import srk as hab_srk
from segway_sign.formats.hab.csf import Block

UTC = datetime.timezone.utc
SIGNING_TIME = datetime.datetime(2024, 1, 1, tzinfo=UTC)
CST_TIME = "2024-01-01 00:00:00"  # CST's CMS signing-time (faketime -f without '@': the clock stands still)

# Debian's cst 3.3.1+dfsg-2+b1 is linked without libcrypto and without CST's replaceable "libpw"
# (get_key_file / get_passcode_to_key_file), so it crashes on any signing CSF. Preloading libcrypto
# and this minimal libpw (key file = certificate file name with "_crt" → "_key", keys unencrypted)
# makes it the file-key oracle it is meant to be.
LIBPW_SHIM = r"""
#include <stdint.h>
#include <string.h>
int32_t get_key_file(const char *cert_file, char *key_file)
{
    const char *last = NULL, *p = cert_file;
    while ((p = strstr(p, "_crt")) != NULL) last = p++;
    strcpy(key_file, cert_file);
    if (last) memcpy(key_file + (last - cert_file), "_key", 4);
    return 0;
}
int get_passcode_to_key_file(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf; (void)size; (void)rwflag; (void)userdata;
    return 0;
}
"""
LIBCRYPTO = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A CST-style PKI tree: SRK1..4 (CA), CSF1_1 and IMG1_1 under SRK<index>, as files and objects."""

    def __init__(self, root: Path, kind: str, srk_index: int = 0):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.srk_keys = [self._key() for _ in range(4)]
        self.srk_certs = [
            hab_pki.issue_certificate(k.public_key(), f"SRK{i + 1}_sha256_{kind}_v3_ca", k, None, ca=True,
                                      serial=i + 1, not_before=SIGNING_TIME)
            for i, k in enumerate(self.srk_keys)
        ]
        self.srk_index = srk_index
        issuer_key, issuer_cert = self.srk_keys[srk_index], self.srk_certs[srk_index]
        self.csf_key, self.img_key = self._key(), self._key()
        self.csf_cert = hab_pki.issue_certificate(self.csf_key.public_key(), "CSF1_1_usr", issuer_key, issuer_cert,
                                                  ca=False, serial=0x100, not_before=SIGNING_TIME)
        self.img_cert = hab_pki.issue_certificate(self.img_key.public_key(), "IMG1_1_usr", issuer_key, issuer_cert,
                                                  ca=False, serial=0x101, not_before=SIGNING_TIME)
        for name, key, cert in [*((f"SRK{i + 1}", k, c) for i, (k, c) in enumerate(zip(self.srk_keys, self.srk_certs))),
                                ("CSF1_1", self.csf_key, self.csf_cert), ("IMG1_1", self.img_key, self.img_cert)]:
            (root / f"{name}_crt.pem").write_bytes(_pem(cert))
            (root / f"{name}_key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.table = hab_srk.srk_table([c.public_key() for c in self.srk_certs])
        (root / "SRK_table.bin").write_bytes(self.table)

    def _key(self):
        if self.kind == "rsa2048":
            return rsa.generate_private_key(65537, 2048)
        return ec.generate_private_key(ec.SECP256R1())

    def keys(self) -> hab.HabKeys:
        return hab.HabKeys(self.table, self.srk_index, self.csf_key, self.csf_cert, self.img_key, self.img_cert)


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki-rsa"), "rsa2048")


@pytest.fixture(scope="module")
def ec_pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki-ec"), "p256", srk_index=2)


@pytest.fixture(scope="module")
def libpw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("libpw")
    (root / "libpw.c").write_text(LIBPW_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(root / "libpw.so"), str(root / "libpw.c")],
                   check=True, timeout=120)
    return root / "libpw.so"


def run_cst(libpw: Path, workdir: Path, csf_text: str) -> bytes:
    (workdir / "csf.txt").write_text(csf_text)
    env = dict(os.environ, LD_PRELOAD=f"{LIBCRYPTO} {libpw}")
    res = subprocess.run(["faketime", "-f", CST_TIME, "cst", "-i", "csf.txt", "-o", "csf.bin"], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return (workdir / "csf.bin").read_bytes()


def cst_text(pki: Pki, blocks: list[Block], image_name: str, version: str = "4.2", engine: str = "CAAM",
             unlock_mid: bool = False) -> str:
    root = pki.root
    unlock = "[Unlock]\n    Engine = CAAM\n    Features = MID\n\n" if unlock_mid else ""
    listed = ", \\\n        ".join(f'0x{b.address:x} 0x{b.offset:x} 0x{b.length:x} "{image_name}"' for b in blocks)
    return f"""[Header]
    Version = {version}
    Hash Algorithm = sha256
    Engine = {engine}
    Engine Configuration = 0
    Certificate Format = X509
    Signature Format = CMS

[Install SRK]
    File = "{root}/SRK_table.bin"
    Source index = {pki.srk_index}

[Install CSFK]
    File = "{root}/CSF1_1_crt.pem"

[Authenticate CSF]

{unlock}[Install Key]
    Verification index = 0
    Target index = 2
    File = "{root}/IMG1_1_crt.pem"

[Authenticate Data]
    Verification index = 2
    Blocks = {listed}
"""


def make_uboot_imx(root: Path, size: int = 300_000) -> tuple[Path, str]:
    """A u-boot.imx built by U-Boot's mkimage with a CSF area; returns it and mkimage's output."""
    (root / "u-boot.bin").write_bytes(os.urandom(size))
    (root / "imx.cfg").write_text("IMAGE_VERSION 2\nBOOT_FROM sd\nCSF 0x2000\nDATA 4 0x020e4024 0x00000001\n")
    res = subprocess.run(["mkimage", "-n", "imx.cfg", "-T", "imximage", "-e", "0x87800000", "-d", "u-boot.bin",
                          "u-boot.imx"], cwd=root, capture_output=True, text=True, timeout=120, check=True)
    return root / "u-boot.imx", res.stdout


FIT_ITS = """/dts-v1/;
/ {
    description = "i.MX8M U-Boot FIT";
    #address-cells = <1>;
    images {
        uboot-1 { description = "U-Boot"; data = /incbin/("u-boot-nodtb.bin"); type = "standalone";
                  arch = "arm64"; compression = "none"; load = <0x40200000>; };
        fdt-1 { description = "board dtb"; data = /incbin/("board.dtb"); type = "flat_dt"; compression = "none"; };
        atf-1 { description = "TF-A"; data = /incbin/("bl31.bin"); type = "firmware"; arch = "arm64";
                compression = "none"; load = <0x920000>; entry = <0x920000>; };
    };
    configurations {
        default = "config-1";
        config-1 { description = "evk"; firmware = "uboot-1"; loadables = "atf-1"; fdt = "fdt-1"; };
    };
};
"""


def make_flash_bin(root: Path) -> tuple[Path, str]:
    """An i.MX8M flash.bin (SPL + FIT with external data) from U-Boot's mkimage -T imx8mimage."""
    for name, size in (("spl.bin", 150_000), ("u-boot-nodtb.bin", 400_000), ("bl31.bin", 40_000),
                       ("board.dtb", 30_000)):
        (root / name).write_bytes(os.urandom(size))
    (root / "u-boot.its").write_text(FIT_ITS)
    subprocess.run(["mkimage", "-E", "-p", "0x3000", "-f", "u-boot.its", "u-boot.itb"], cwd=root,
                   capture_output=True, timeout=120, check=True)
    (root / "imx8m.cfg").write_text("FIT\nROM_VERSION v1\nBOOT_FROM sd\nLOADER spl.bin 0x7E1000\n"
                                    "SECOND_LOADER u-boot.itb 0x40200000 0x60000\n")
    res = subprocess.run(["mkimage", "-n", "imx8m.cfg", "-T", "imx8mimage", "-e", "0x7E1000", "-d", "spl.bin",
                          "flash.bin"], cwd=root, capture_output=True, text=True, timeout=120, check=True)
    return root / "flash.bin", res.stdout


def mkimage_block(stdout: str, label: str) -> Block:
    m = re.search(label + r":\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", stdout, re.I)
    assert m, stdout
    return Block(*(int(x, 16) for x in m.groups()))


def openssl_cms_verify(tmp: Path, sig: bytes, content: bytes, cert: x509.Certificate) -> subprocess.CompletedProcess:
    (tmp / "sig.der").write_bytes(sig)
    (tmp / "content.bin").write_bytes(content)
    (tmp / "signer.pem").write_bytes(_pem(cert))
    return subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "sig.der", "-content",
                           "content.bin", "-noverify", "-certfile", "signer.pem", "-out", "/dev/null"],
                          cwd=tmp, capture_output=True, text=True, timeout=120)


def csf_parser(tmp: Path, *args: str) -> Path:
    """Run NXP's csf_parser; it writes what it extracted to ./output."""
    shutil.rmtree(tmp / "output", ignore_errors=True)
    res = subprocess.run(["csf_parser", *args], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp / "output"


# ------------------------------------------------------------------------------------- SRK


@pytest.mark.parametrize("kind,count,hab_ver", [("rsa2048", 4, "4"), ("p256", 4, "4.5"), ("rsa2048", 1, "4")])
def test_srk_table_and_fuses_match_srktool(tmp_path, rsa_pki, ec_pki, kind, count, hab_ver):
    pki = rsa_pki if kind == "rsa2048" else ec_pki
    certs = ",".join(str(pki.root / f"SRK{i + 1}_crt.pem") for i in range(count))
    for fmt in (0, 1):
        subprocess.run(["srktool", "-h", hab_ver, "-t", "table.bin", "-e", f"fuse{fmt}.bin", "-d", "sha256",
                        "-c", certs, "-f", str(fmt)], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    table = hab_srk.srk_table([c.public_key() for c in pki.srk_certs[:count]])
    assert table == (tmp_path / "table.bin").read_bytes()
    digest = hab_srk.srk_hash(table)
    assert hab_srk.fuse_file(digest, 1) == (tmp_path / "fuse1.bin").read_bytes()
    assert hab_srk.fuse_file(digest, 0) == (tmp_path / "fuse0.bin").read_bytes()
    words = hab_srk.srk_fuse_words([c.public_key() for c in pki.srk_certs[:count]])
    assert words == list(struct.unpack("<8I", (tmp_path / "fuse1.bin").read_bytes()))
    # Each record's key reads back as the certificate's key (used to check CSF/IMG certificates).
    for entry, cert in zip(hab_srk.parse_srk_table(table), pki.srk_certs):
        assert hab_srk.entry_public_key(entry.raw).public_numbers() == cert.public_key().public_numbers()


def test_fuse_prog_lines_follow_the_soc_layout():
    words = list(range(1, 9))
    assert hab_srk.fuse_prog_lines(words, "imx6")[7] == "fuse prog -y 3 7 0x00000008"
    lines = hab_srk.fuse_prog_lines(words, "imx8m")
    assert lines[3] == "fuse prog -y 6 3 0x00000004" and lines[4] == "fuse prog -y 7 0 0x00000005"
    with pytest.raises(UsageError):
        hab_srk.fuse_prog_lines(words, "imx9")


def test_bad_srk_tables_are_refused():
    with pytest.raises(InputError):
        hab_srk.parse_srk_table(b"\xd7\x00\x04")
    with pytest.raises(InputError):
        hab_srk.srk_hash(b"\xd7\x00\x10\x40" + bytes(12))
    with pytest.raises(UsageError):
        hab_srk.srk_table([])
    with pytest.raises(InputError):
        hab_srk.srk_entry(ec.generate_private_key(ec.SECP256K1()).public_key())


# ---------------------------------------------------------------------- i.MX6/7 u-boot.imx


def test_imx_blocks_match_mkimage(tmp_path):
    path, stdout = make_uboot_imx(tmp_path)
    (name, ivt), = hab.locate_parts(path.read_bytes(), "imx6")
    assert hab.loader_blocks(ivt) == [mkimage_block(stdout, "HAB Blocks")]


@pytest.mark.parametrize("engine,unlock_mid", [("CAAM", False), ("ANY", False), ("CAAM", True)])
def test_imx_csf_is_byte_identical_to_cst(tmp_path, rsa_pki, libpw, engine, unlock_mid):
    path, _ = make_uboot_imx(tmp_path)
    image = path.read_bytes()
    (_, ivt), = hab.locate_parts(image, "imx6")
    blocks = hab.loader_blocks(ivt)
    reference = run_cst(libpw, tmp_path, cst_text(rsa_pki, blocks, str(path), engine=engine, unlock_mid=unlock_mid))
    spec = hab_csf.CsfSpec(rsa_pki.table, 0, rsa_pki.csf_cert, rsa_pki.img_cert, blocks, version=0x42,
                           engine=hab_csf.ENGINES[engine.lower()], unlock_mid=unlock_mid)
    ours = hab_csf.build_csf(spec, rsa_pki.csf_key, rsa_pki.img_key, image, SIGNING_TIME)
    # Command by command first (a readable failure), then the whole CSF with certificates and signatures.
    assert [c.raw.hex() for c in hab_csf.parse_csf(ours).commands] == \
        [c.raw.hex() for c in hab_csf.parse_csf(reference).commands]
    assert ours == reference


def test_signed_imx_passes_csf_parser_and_openssl(tmp_path, rsa_pki):
    path, _ = make_uboot_imx(tmp_path)
    image = path.read_bytes()
    signed = hab.sign_image(image, "imx6", rsa_pki.keys(), signing_time=SIGNING_TIME)
    part, = signed.parts
    assert signed.image[: part.csf_offset] == image[: part.csf_offset]  # nothing but the CSF changes
    (tmp_path / "signed.imx").write_bytes(signed.image)
    out = csf_parser(tmp_path, "-s", "signed.imx")
    assert (out / "SRKTable.bin").read_bytes() == rsa_pki.table
    assert x509.load_der_x509_certificate((out / "cert0.der").read_bytes()) == rsa_pki.csf_cert
    assert x509.load_der_x509_certificate((out / "cert1.der").read_bytes()) == rsa_pki.img_cert
    parsed = (out / "parsed_output.txt").read_text()
    assert "Authenticate Data" in parsed or "AUT_DAT" in parsed.upper() or "0xca" in parsed.lower()
    header_len = hab_csf.parse_csf(part.csf).header_len
    blocks = hab_csf.block_data(signed.image, part.blocks)
    ok = openssl_cms_verify(tmp_path, (out / "sig0.bin").read_bytes(), part.csf[:header_len], rsa_pki.csf_cert)
    assert ok.returncode == 0, ok.stderr
    ok = openssl_cms_verify(tmp_path, (out / "sig1.bin").read_bytes(), blocks, rsa_pki.img_cert)
    assert ok.returncode == 0, ok.stderr
    assert hab.verify_image(signed.image, "imx6", rsa_pki.table)[0]["srk_index"] == 0

    # One flipped byte in the authenticated range: both openssl and our verifier refuse it.
    tampered = bytearray(signed.image)
    tampered[0x1000] ^= 0x01
    bad = openssl_cms_verify(tmp_path, (out / "sig1.bin").read_bytes(),
                             hab_csf.block_data(bytes(tampered), part.blocks), rsa_pki.img_cert)
    assert bad.returncode != 0
    with pytest.raises(VerificationError):
        hab.verify_image(bytes(tampered), "imx6", rsa_pki.table)
    # A flipped byte in the CSF commands breaks the CSF signature.
    tampered = bytearray(signed.image)
    tampered[part.csf_offset + 0x0B] ^= 0x01  # the SRK table offset inside Install SRK
    with pytest.raises((VerificationError, InputError)):
        hab.verify_image(bytes(tampered), "imx6")


def test_wrong_srk_or_key_is_refused(rsa_pki, tmp_path):
    path, _ = make_uboot_imx(tmp_path)
    keys = rsa_pki.keys()
    keys.srk_index = 1  # the certificates were issued by SRK1, not SRK2
    with pytest.raises(VerificationError, match="not signed by the selected SRK"):
        hab.sign_image(path.read_bytes(), "imx6", keys, signing_time=SIGNING_TIME)
    keys = rsa_pki.keys()
    keys.img_key = rsa_pki.csf_key
    with pytest.raises(UsageError, match="does not match the certificate"):
        hab.sign_image(path.read_bytes(), "imx6", keys, signing_time=SIGNING_TIME)
    with pytest.raises(InputError, match="no IVT"):
        hab.sign_image(os.urandom(4096), "imx6", rsa_pki.keys(), signing_time=SIGNING_TIME)


# ------------------------------------------------------------------------- i.MX8M flash.bin


def test_flash_bin_parts_match_mkimage(tmp_path):
    path, stdout = make_flash_bin(tmp_path)
    image = path.read_bytes()
    parts = dict(hab.locate_parts(image, "imx8m"))
    assert hab.loader_blocks(parts["spl"]) == [mkimage_block(stdout, "spl hab block")]
    fit = hab.fit_blocks(image, parts["fit"])
    assert fit[0] == mkimage_block(stdout, "sld hab block")
    assert parts["fit"].csf_offset == int(re.search(r"sld_csf_off\s+(0x[0-9a-f]+)", stdout).group(1), 16)
    # The external images: where mkimage -E -p 0x3000 put them, at their load addresses.
    itb = (tmp_path / "u-boot.itb").read_bytes()
    fit_off = fit[0].offset
    (tree_size,) = struct.unpack_from(">I", itb, 4)
    assert image[fit_off : fit_off + tree_size] == itb[:tree_size]
    assert image[fit_off + 0x3000 : fit_off + len(itb)] == itb[0x3000:]
    by_addr = {b.address: b for b in fit[1:]}
    assert image[by_addr[0x40200000].offset :][:400_000] == (tmp_path / "u-boot-nodtb.bin").read_bytes()
    assert image[by_addr[0x920000].offset :][:40_000] == (tmp_path / "bl31.bin").read_bytes()
    assert by_addr[0x40200000 + 400_000].length == 30_000  # the dtb, right after U-Boot


def test_flash_bin_both_csfs_match_cst_and_verify(tmp_path, rsa_pki, libpw):
    path, _ = make_flash_bin(tmp_path)
    image = path.read_bytes()
    signed = hab.sign_image(image, "imx8m", rsa_pki.keys(), version=0x43, signing_time=SIGNING_TIME)
    assert [p.name for p in signed.parts] == ["spl", "fit"]
    for part in signed.parts:
        work = tmp_path / part.name
        work.mkdir()
        reference = run_cst(libpw, work, cst_text(rsa_pki, part.blocks, str(path), version="4.3",
                                                  unlock_mid=part.name == "spl"))
        assert part.csf == reference
        # csf_parser reads each CSF and extracts what HAB will use.
        (work / "csf.bin").write_bytes(signed.image[part.csf_offset : part.csf_offset + len(part.csf)])
        out = csf_parser(work, "-c", "csf.bin")
        assert (out / "SRKTable.bin").read_bytes() == rsa_pki.table
        ok = openssl_cms_verify(work, (out / "sig1.bin").read_bytes(),
                                hab_csf.block_data(signed.image, part.blocks), rsa_pki.img_cert)
        assert ok.returncode == 0, ok.stderr
    # The SPL CSF sits in the 8 KiB mkimage reserved; the FIT is untouched by the SPL CSF.
    spl, fit = signed.parts
    assert spl.csf_offset + len(spl.csf) <= spl.csf_offset + 0x2000 <= fit.blocks[0].offset
    report = hab.verify_image(signed.image, "imx8m", rsa_pki.table)
    assert [r["part"] for r in report] == ["spl", "fit"]
    # Tamper with TF-A (a FIT block): the FIT CSF no longer verifies.
    atf = next(b for b in fit.blocks if b.address == 0x920000)
    tampered = bytearray(signed.image)
    tampered[atf.offset + 100] ^= 0x80
    with pytest.raises(VerificationError):
        hab.verify_image(bytes(tampered), "imx8m")


def test_explicit_blocks_as_imx_mkimage_prints_them(tmp_path, rsa_pki):
    path, stdout = make_flash_bin(tmp_path)
    image = path.read_bytes()
    parts = dict(hab.locate_parts(image, "imx8m"))
    auto = hab.fit_blocks(image, parts["fit"])
    text = ",\n".join(f'0x{b.address:x} 0x{b.offset:x} 0x{b.length:x} "flash.bin"' for b in auto)
    given = hab.parse_blocks(text)
    signed = hab.sign_image(image, "imx8m", rsa_pki.keys(), blocks={"fit": given}, signing_time=SIGNING_TIME)
    assert signed.parts[1].blocks == auto
    assert hab.verify_image(signed.image, "imx8m", rsa_pki.table, {"fit": given})[1]["part"] == "fit"
    # A block list that leaves a FIT image out would let SPL run it unauthenticated: refused when
    # signing, and when verifying an image whose CSF lists only those blocks.
    with pytest.raises(UsageError, match="FIT image 'fdt-1' .* is not authenticated"):
        hab.sign_image(image, "imx8m", rsa_pki.keys(), blocks={"fit": auto[:2]}, signing_time=SIGNING_TIME)
    keys = rsa_pki.keys()
    partial = bytearray(signed.image)
    (_, ivt), = hab.locate_parts(image, "imx8m", ["fit"])
    csf = hab_csf.build_csf(hab_csf.CsfSpec(rsa_pki.table, 0, keys.csf_cert, keys.img_cert, auto[:2]), keys.csf_key,
                            keys.img_key, image, SIGNING_TIME)
    partial[ivt.csf_offset : ivt.csf_offset + 0x1000] = csf.ljust(0x1000, b"\0")
    with pytest.raises(VerificationError, match="fit part: FIT image 'fdt-1' .* is not authenticated"):
        hab.verify_image(bytes(partial), "imx8m", rsa_pki.table, {"fit": auto[:2]})
    with pytest.raises(VerificationError, match="fit part .*other blocks than the image layout gives"):
        hab.verify_image(bytes(partial), "imx8m", rsa_pki.table)
    with pytest.raises(UsageError):
        hab.parse_blocks("0x1000 0x0")
    with pytest.raises(UsageError, match="part the image does not have"):
        hab.sign_image(image, "imx8m", rsa_pki.keys(), blocks={"imx": given}, signing_time=SIGNING_TIME)


# ------------------------------------------------- i.MX8M: every part the ROM and SPL authenticate


def csf_read_ranges(csf: bytes) -> list[tuple[int, int]]:
    """The bytes of a CSF that HAB reads: header and commands, and each blob a command points to
    (not the alignment padding between blobs)."""
    parsed = hab_csf.parse_csf(csf)
    ranges = [(0, parsed.header_len)]
    for cmd in parsed.commands:
        if cmd.tag in (hab_csf.CMD_INSTALL_KEY, hab_csf.CMD_AUTHENTICATE):
            (at,) = struct.unpack_from(">I", cmd.raw, 8)
            ranges.append((at, at + struct.unpack_from(">H", csf, at + 1)[0]))
    return ranges


def fit_part_attacks(image: bytes, fit: hab.SignedPart) -> dict[str, tuple[bytes, str]]:
    """Ways to lose or alter the FIT part of a signed flash.bin, each with the error it must give."""
    fit_off, ivt, csf_off = fit.blocks[0].offset, fit.ivt_offset, fit.csf_offset
    uboot = next(b for b in fit.blocks if b.address == 0x40200000)
    parsed = hab_csf.parse_csf(fit.csf)
    aut_data = next(c for c in parsed.commands if c.tag == hab_csf.CMD_AUTHENTICATE and len(c.raw) > 12)
    cmd_pos = fit.csf.index(aut_data.raw) + len(aut_data.raw) - 1  # low byte of the last block's length
    (sig_at,) = struct.unpack_from(">I", aut_data.raw, 8)
    sig_end = sig_at + struct.unpack_from(">H", fit.csf, sig_at + 1)[0]

    def flip(pos: int) -> bytes:
        return image[:pos] + bytes([image[pos] ^ 0x01]) + image[pos + 1 :]

    return {
        "FIT part cut off": (image[:fit_off], "fit part missing"),
        "truncated in the FIT tree": (image[: fit_off + 0x100], "fit part truncated"),
        "truncated before its IVT": (image[: ivt + 0x10], "fit part: no IVT"),
        "truncated in U-Boot": (image[: uboot.offset + uboot.length // 2], "lies outside the image"),
        "shifted by one byte": (image[:fit_off] + b"\0" + image[fit_off:], "fit part missing"),
        "shifted back by one byte": (image[: fit_off - 1] + image[fit_off:], "fit part missing"),
        "IVT zeroed": (image[:ivt] + bytes(hab.IVT_SIZE) + image[ivt + hab.IVT_SIZE :], "fit part: no IVT"),
        "U-Boot overwritten": (image[: uboot.offset + 0x100] + b"\xaa" * 64 + image[uboot.offset + 0x140 :],
                               "Authenticate Data (the image blocks): CMS message digest does not match"),
        "CSF command flipped": (flip(csf_off + cmd_pos), "Authenticate CSF (the CSF commands)"),
        "CSF data signature flipped": (flip(csf_off + sig_end - 1), "Authenticate Data (the image blocks): CMS "
                                                                    "signature does not verify"),
    }


def test_flash_bin_verify_needs_every_part(tmp_path, rsa_pki, libpw):
    path, stdout = make_flash_bin(tmp_path)
    image = path.read_bytes()
    signed = hab.sign_image(image, "imx8m", rsa_pki.keys(), version=0x43, signing_time=SIGNING_TIME)
    spl, fit = signed.parts
    # The FIT CSF is still CST's, byte for byte.
    assert fit.csf == run_cst(libpw, tmp_path, cst_text(rsa_pki, fit.blocks, str(path), version="4.3"))
    digest = hab_srk.srk_hash(rsa_pki.table)
    report = hab.verify_image(signed.image, "imx8m", srk_hash=digest)
    assert [(r["part"], r["ivt_offset"]) for r in report] == [("spl", spl.ivt_offset), ("fit", fit.ivt_offset)]
    assert fit.blocks[0].offset == int(re.search(r"sld_header_off\s+(0x[0-9a-f]+)", stdout).group(1), 16)

    for what, (data, message) in fit_part_attacks(signed.image, fit).items():
        with pytest.raises((VerificationError, InputError), match=re.escape(message)) as err:
            hab.verify_image(data, "imx8m", rsa_pki.table)
        assert str(err.value).startswith("fit part"), (what, str(err.value))
        # --parts spl is the explicit way to check the SPL part alone.
        assert [r["part"] for r in hab.verify_image(data, "imx8m", rsa_pki.table, parts=["spl"])] == ["spl"]

    # A FIT part signed by another PKI is refused even without a trust anchor: the device fuses one
    # SRK_HASH for both parts.
    other = Pki(tmp_path / "other", "rsa2048")
    foreign = hab.sign_image(image, "imx8m", other.keys(), version=0x43, signing_time=SIGNING_TIME)
    mixed = signed.image[: fit.blocks[0].offset] + foreign.image[fit.blocks[0].offset :]
    with pytest.raises(VerificationError, match="fit part: its CSF installs another SRK table than the spl part's"):
        hab.verify_image(mixed, "imx8m")
    with pytest.raises(VerificationError, match=f"not the expected SRK_HASH {digest.hex()}"):
        hab.verify_image(foreign.image, "imx8m", srk_hash=digest)

    # The same image with --soc imx6 would check its SPL alone: refused.
    with pytest.raises(VerificationError, match="second HAB part"):
        hab.verify_image(signed.image, "imx6")
    with pytest.raises(UsageError, match="no part 'imx'"):
        hab.verify_image(signed.image, "imx8m", parts=["imx"])


@pytest.mark.slow
def test_every_byte_hab_reads_in_the_fit_csf_is_checked(tmp_path, rsa_pki):
    """A flipped bit anywhere HAB reads in the FIT CSF (commands, SRK table, certificates, CMS
    signatures, including the CMS fields outside the signed attributes) is refused."""
    path, _ = make_flash_bin(tmp_path)
    signed = hab.sign_image(path.read_bytes(), "imx8m", rsa_pki.keys(), version=0x43, signing_time=SIGNING_TIME)
    fit = signed.parts[1]
    accepted = []
    for start, end in csf_read_ranges(fit.csf):
        for pos in range(start, end):
            csf = bytearray(fit.csf)
            csf[pos] ^= 0x01 if pos % 2 else 0x80
            try:
                summary = hab_csf.verify_csf(bytes(csf), signed.image, fit.blocks)
            except (VerificationError, InputError):
                continue
            if summary["srk_table"] != rsa_pki.table:
                continue  # another SRK table than the SPL part's: verify_image refuses that
            accepted.append(f"0x{pos:x}")
    assert not accepted


def test_fit_part_where_imx_mkimage_records_it(tmp_path, rsa_pki):
    """imx-mkimage (ROM v1) writes the FIT's offset from the SPL IVT into the SPL IVT's reserved1
    word; the FIT part must be there, not merely somewhere after the SPL part."""
    path, _ = make_flash_bin(tmp_path)
    image = bytearray(path.read_bytes())
    parts = dict(hab.locate_parts(bytes(image), "imx8m"))
    fit_off = hab.fit_blocks(bytes(image), parts["fit"])[0].offset
    struct.pack_into("<I", image, parts["spl"].offset + 8, fit_off - parts["spl"].offset)
    signed = hab.sign_image(bytes(image), "imx8m", rsa_pki.keys(), signing_time=SIGNING_TIME)
    assert [r["part"] for r in hab.verify_image(signed.image, "imx8m", rsa_pki.table)] == ["spl", "fit"]
    # The recorded offset is signed (in the SPL block); a FIT moved by a sector is not the one that boots.
    moved = signed.image[:fit_off] + bytes(0x200) + signed.image[fit_off:]
    with pytest.raises(VerificationError, match=f"fit part missing: no FIT tree at 0x{fit_off:x} "
                                                r"\(where the SPL IVT records it\)"):
        hab.verify_image(moved, "imx8m", rsa_pki.table)
    assert hab.verify_image(moved, "imx8m", rsa_pki.table, fit_offset=fit_off + 0x200)[1]["part"] == "fit"
    # Without the record, --fit-offset pins it.
    with pytest.raises(VerificationError, match=r"no FIT tree at 0x57c01 \(as given\)"):
        hab.verify_image(bytes(path.read_bytes()), "imx8m", fit_offset=0x57c01)


def test_sign_needs_every_part_unless_told(tmp_path, rsa_pki):
    path, _ = make_flash_bin(tmp_path)
    image = path.read_bytes()
    fit_off = hab.fit_blocks(image, dict(hab.locate_parts(image, "imx8m"))["fit"])[0].offset
    with pytest.raises(VerificationError, match="fit part missing"):
        hab.sign_image(image[:fit_off], "imx8m", rsa_pki.keys(), signing_time=SIGNING_TIME)
    spl_only = hab.sign_image(image[:fit_off], "imx8m", rsa_pki.keys(), signing_time=SIGNING_TIME, parts=["spl"])
    assert [p.name for p in spl_only.parts] == ["spl"]
    assert hab.verify_image(spl_only.image, "imx8m", rsa_pki.table, parts="spl")[0]["part"] == "spl"
    with pytest.raises(VerificationError, match="fit part missing"):
        hab.verify_image(spl_only.image, "imx8m", rsa_pki.table)
    # Signing the SPL of a full flash.bin leaves the FIT CSF empty: the full check refuses that.
    half = hab.sign_image(image, "imx8m", rsa_pki.keys(), signing_time=SIGNING_TIME, parts=["spl"])
    with pytest.raises(InputError, match="fit part .*not a HAB CSF"):
        hab.verify_image(half.image, "imx8m", rsa_pki.table)
    with pytest.raises(UsageError, match="not signed"):
        hab.sign_image(image, "imx8m", rsa_pki.keys(), signing_time=SIGNING_TIME, parts=["spl"],
                       blocks={"fit": hab.fit_blocks(image, dict(hab.locate_parts(image, "imx8m"))["fit"])})


# ------------------------------------------------------------------------------ ECDSA (4.5)


def test_ecdsa_hab45_commands_match_cst_and_signatures_verify(tmp_path, ec_pki, libpw):
    path, _ = make_uboot_imx(tmp_path)
    image = path.read_bytes()
    signed = hab.sign_image(image, "imx7", ec_pki.keys(), version=0x45, signing_time=SIGNING_TIME)
    part, = signed.parts
    reference = run_cst(libpw, tmp_path, cst_text(ec_pki, part.blocks, str(path), version="4.5"))
    # ECDSA signatures are randomised: commands must match, signatures must verify (openssl).
    ours_cmds = hab_csf.parse_csf(part.csf).commands
    ref_cmds = hab_csf.parse_csf(reference).commands
    assert [c.raw[:8] for c in ours_cmds] == [c.raw[:8] for c in ref_cmds]
    assert [c.raw[12:] for c in ours_cmds] == [c.raw[12:] for c in ref_cmds]
    (tmp_path / "signed.imx").write_bytes(signed.image)
    out = csf_parser(tmp_path, "-s", "signed.imx")
    # With ECDSA the CSF signature is the last blob (its DER length varies), so csf_parser, which
    # extracts in file order, names the data signature sig0 and the CSF signature sig1.
    header_len = hab_csf.parse_csf(part.csf).header_len
    ok = openssl_cms_verify(tmp_path, (out / "sig1.bin").read_bytes(), part.csf[:header_len], ec_pki.csf_cert)
    assert ok.returncode == 0, ok.stderr
    ok = openssl_cms_verify(tmp_path, (out / "sig0.bin").read_bytes(),
                            hab_csf.block_data(signed.image, part.blocks), ec_pki.img_cert)
    assert ok.returncode == 0, ok.stderr
    assert hab.verify_image(signed.image, "imx7", ec_pki.table)[0]["srk_index"] == 2


# --------------------------------------------------------------------------- token-backed


@pytest.mark.slow
def test_sign_with_token_keys(token, tmp_path):
    """SRK, CSF and IMG keys generated inside the token; certificates issued with the token SRK."""
    srk_uris = [token.generate("rsa2048", f"SRK{i}") for i in range(1, 5)]
    srk_keys = [open_token_key(token, u) for u in srk_uris]
    csf_key = open_token_key(token, token.generate("rsa2048", "CSF1_1"))
    img_key = open_token_key(token, token.generate("rsa2048", "IMG1_1"))
    srk_cert = hab_pki.issue_certificate(srk_keys[0].public_key(), "SRK1", srk_keys[0], None, ca=True, serial=1,
                                         not_before=SIGNING_TIME)
    csf_cert = hab_pki.issue_certificate(csf_key.public_key(), "CSF1_1", srk_keys[0], srk_cert, ca=False,
                                         serial=2, not_before=SIGNING_TIME)
    img_cert = hab_pki.issue_certificate(img_key.public_key(), "IMG1_1", srk_keys[0], srk_cert, ca=False,
                                         serial=3, not_before=SIGNING_TIME)
    table = hab_srk.srk_table([k.public_key() for k in srk_keys])
    path, _ = make_uboot_imx(tmp_path)
    signed = hab.sign_image(path.read_bytes(), "imx6", hab.HabKeys(table, 0, csf_key, csf_cert, img_key, img_cert),
                            signing_time=SIGNING_TIME)
    (tmp_path / "signed.imx").write_bytes(signed.image)
    out = csf_parser(tmp_path, "-s", "signed.imx")
    assert (out / "SRKTable.bin").read_bytes() == table
    part, = signed.parts
    ok = openssl_cms_verify(tmp_path, (out / "sig1.bin").read_bytes(),
                            hab_csf.block_data(signed.image, part.blocks), img_cert)
    assert ok.returncode == 0, ok.stderr
    # RSA PKCS#1 v1.5 is deterministic: the token's CSF equals one made with the same time again.
    again = hab.sign_image(path.read_bytes(), "imx6", hab.HabKeys(table, 0, csf_key, csf_cert, img_key, img_cert),
                           signing_time=SIGNING_TIME)
    assert again.image == signed.image


# ------------------------------------------------------------------ fast authentication


def test_fast_authentication_matches_cst(tmp_path, libpw):
    """[Install NOCAK]: a non-CA SRK signs the CSF and the data itself."""
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(4)]
    certs = [hab_pki.issue_certificate(k.public_key(), f"SRK{i + 1}", k, None, ca=False, serial=i + 1,
                                       not_before=SIGNING_TIME) for i, k in enumerate(keys)]
    for i, (k, c) in enumerate(zip(keys, certs), 1):
        (tmp_path / f"SRK{i}_crt.pem").write_bytes(_pem(c))
        (tmp_path / f"SRK{i}_key.pem").write_bytes(k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    subprocess.run(["srktool", "-h", "4", "-t", "table.bin", "-e", "fuse.bin", "-d", "sha256", "-c",
                    ",".join(f"SRK{i}_crt.pem" for i in range(1, 5)), "-f", "1"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    table = hab_srk.srk_table([c.public_key() for c in certs], ca=False)
    assert table == (tmp_path / "table.bin").read_bytes()
    path, _ = make_uboot_imx(tmp_path)
    image = path.read_bytes()
    (_, ivt), = hab.locate_parts(image, "imx6")
    blocks = hab.loader_blocks(ivt)
    listed = f'0x{blocks[0].address:x} 0x{blocks[0].offset:x} 0x{blocks[0].length:x} "{path}"'
    reference = run_cst(libpw, tmp_path, f"""[Header]
    Version = 4.2
    Hash Algorithm = sha256
    Engine = CAAM
    Engine Configuration = 0
    Certificate Format = X509
    Signature Format = CMS

[Install SRK]
    File = "table.bin"
    Source index = 1

[Install NOCAK]
    File = "SRK2_crt.pem"

[Authenticate CSF]

[Authenticate Data]
    Verification index = 0
    Blocks = {listed}
""")
    spec = hab_csf.CsfSpec(table, 1, certs[1], None, blocks, nocak=True)
    assert hab_csf.build_csf(spec, keys[1], None, image, SIGNING_TIME) == reference

    signed = hab.sign_image(image, "imx6", hab.HabKeys(table, 1, keys[1], certs[1], nocak=True),
                            signing_time=SIGNING_TIME)
    part, = signed.parts
    (tmp_path / "signed.imx").write_bytes(signed.image)
    out = csf_parser(tmp_path, "-s", "signed.imx")
    ok = openssl_cms_verify(tmp_path, (out / "sig1.bin").read_bytes(), hab_csf.block_data(signed.image, part.blocks),
                            certs[1])
    assert ok.returncode == 0, ok.stderr
    assert hab.verify_image(signed.image, "imx6", table)[0]["fast_authentication"]
    with pytest.raises(UsageError, match="CA flag"):
        hab.sign_image(image, "imx6", hab.HabKeys(hab_srk.srk_table([c.public_key() for c in certs]), 1, keys[1],
                                                  certs[1], nocak=True), signing_time=SIGNING_TIME)
