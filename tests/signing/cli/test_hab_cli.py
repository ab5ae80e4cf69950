"""``segway-sign hab``: the whole HAB flow from token keys, run as a user would (PIN file, no PIN in argv),
checked with srktool, csf_parser and openssl cms."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ok, one_line_error, run_cli

EPOCH = "1704067200"  # 2024-01-01: SOURCE_DATE_EPOCH fixes the CMS signing time




def make_uboot_imx(root: Path) -> Path:
    (root / "u-boot.bin").write_bytes(os.urandom(200_000))
    (root / "imx.cfg").write_text("IMAGE_VERSION 2\nBOOT_FROM sd\nCSF 0x2000\n")
    subprocess.run(["mkimage", "-n", "imx.cfg", "-T", "imximage", "-e", "0x87800000", "-d", "u-boot.bin",
                    "u-boot.imx"], cwd=root, capture_output=True, timeout=120, check=True)
    return root / "u-boot.imx"


def make_flash_bin(root: Path) -> Path:
    for name, size in (("spl.bin", 100_000), ("u-boot-nodtb.bin", 200_000), ("bl31.bin", 30_000)):
        (root / name).write_bytes(os.urandom(size))
    (root / "u-boot.its").write_text("""/dts-v1/;
/ { description = "fit"; #address-cells = <1>;
    images {
        uboot-1 { data = /incbin/("u-boot-nodtb.bin"); type = "standalone"; arch = "arm64"; compression = "none";
                  load = <0x40200000>; };
        atf-1 { data = /incbin/("bl31.bin"); type = "firmware"; arch = "arm64"; compression = "none";
                load = <0x920000>; entry = <0x920000>; };
    };
    configurations { default = "c1"; c1 { firmware = "uboot-1"; loadables = "atf-1"; }; };
};
""")
    subprocess.run(["mkimage", "-E", "-p", "0x3000", "-f", "u-boot.its", "u-boot.itb"], cwd=root,
                   capture_output=True, timeout=120, check=True)
    (root / "imx8m.cfg").write_text("FIT\nROM_VERSION v1\nBOOT_FROM sd\nLOADER spl.bin 0x7E1000\n"
                                    "SECOND_LOADER u-boot.itb 0x40200000 0x60000\n")
    subprocess.run(["mkimage", "-n", "imx8m.cfg", "-T", "imx8mimage", "-e", "0x7E1000", "-d", "spl.bin",
                    "flash.bin"], cwd=root, capture_output=True, timeout=120, check=True)
    return root / "flash.bin"


@pytest.fixture
def pki(token, tmp_path):
    """SRK1..4, CSF and IMG keys generated in the token; certificates issued through the CLI."""
    pin = ["--pin-file", str(token.pin_file)]
    srks = [token.generate("rsa2048", f"SRK{i}") for i in range(1, 5)]
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    for i, uri in enumerate(srks, 1):
        ok(run_cli(["hab", "cert", "--key", uri, "--issuer-key", uri, "--cn", f"SRK{i}", "--serial", str(i), "--ca",
                    "--out", str(tmp_path / f"SRK{i}_crt.pem"), *pin], token, env))
    keys = {"csf": token.generate("rsa2048", "CSF1_1"), "img": token.generate("rsa2048", "IMG1_1")}
    for n, (name, uri) in enumerate(keys.items(), 10):
        ok(run_cli(["hab", "cert", "--key", uri, "--issuer-key", srks[0], "--issuer-cert",
                    str(tmp_path / "SRK1_crt.pem"), "--cn", name.upper(), "--serial", str(n),
                    "--out", str(tmp_path / f"{name}_crt.pem"), *pin], token, env))
    return {"pin": pin, "srks": srks, **keys}


def test_hab_flow_with_token_keys(token, tmp_path, pki):
    pin = pki["pin"]
    table, fuse = tmp_path / "SRK_table.bin", tmp_path / "SRK_fuse.bin"
    res = json.loads(ok(run_cli(["hab", "srk", "--keys", ",".join(pki["srks"]), "--out-table", str(table),
                                 "--out-fuse", str(fuse), "--soc", "imx6", "--json", *pin], token)))
    # srktool, given the certificates of the same token keys, writes the same table and fuse file.
    certs = ",".join(str(tmp_path / f"SRK{i}_crt.pem") for i in range(1, 5))
    subprocess.run(["srktool", "-h", "4", "-t", "ref_table.bin", "-e", "ref_fuse.bin", "-d", "sha256", "-c", certs,
                    "-f", "1"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    assert table.read_bytes() == (tmp_path / "ref_table.bin").read_bytes()
    assert fuse.read_bytes() == (tmp_path / "ref_fuse.bin").read_bytes()
    assert res["uboot_commands"][0].startswith("fuse prog -y 3 0 0x") and len(res["uboot_commands"]) == 8

    image = make_uboot_imx(tmp_path)
    before = image.read_bytes()
    out = tmp_path / "u-boot-signed.imx"
    args = ["hab", "sign", "--soc", "imx6", "--in", str(image), "--out", str(out), "--srk-table", str(table),
            "--srk-index", "1", "--csf-key", pki["csf"], "--csf-cert", str(tmp_path / "csf_crt.pem"),
            "--img-key", pki["img"], "--img-cert", str(tmp_path / "img_crt.pem"), *pin]
    signed = json.loads(ok(run_cli([*args, "--json", "--csf-dir", str(tmp_path / "csfs")], token,
                                   {"SOURCE_DATE_EPOCH": EPOCH})))
    assert image.read_bytes() == before
    part, = signed["parts"]
    assert (tmp_path / "csfs" / "csf-imx.bin").stat().st_size == part["csf_size"]

    # csf_parser extracts our SRK table, certificates and signatures; openssl verifies the data signature.
    res = subprocess.run(["csf_parser", "-s", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout
    assert (tmp_path / "output" / "SRKTable.bin").read_bytes() == table.read_bytes()
    addr, off, length = (int(x, 16) for x in part["blocks"][0].split())
    (tmp_path / "blocks.bin").write_bytes(out.read_bytes()[off : off + length])
    res = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "output/sig1.bin",
                          "-content", "blocks.bin", "-noverify", "-certfile", "img_crt.pem", "-out", "/dev/null"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    text = ok(run_cli(["hab", "verify", "--soc", "imx6", "--in", str(out), "--srk-table", str(table)]))
    assert text.startswith("OK") and res_hash(text) == fuse.read_bytes().hex()

    # Same SOURCE_DATE_EPOCH, same bytes (RSA PKCS#1 v1.5 is deterministic).
    again = tmp_path / "again.imx"
    args[args.index(str(out))] = str(again)
    ok(run_cli(args, token, {"SOURCE_DATE_EPOCH": EPOCH}))
    assert again.read_bytes() == out.read_bytes()

    # Existing output: refused, untouched; with --force: replaced.
    one_line_error(run_cli(args, token, {"SOURCE_DATE_EPOCH": EPOCH}), 1, "exists")
    ok(run_cli([*args, "--force"], token, {"SOURCE_DATE_EPOCH": EPOCH}))

    # Tampered image: verify fails with one line.
    bad = bytearray(out.read_bytes())
    bad[0x800] ^= 1
    (tmp_path / "bad.imx").write_bytes(bad)
    one_line_error(run_cli(["hab", "verify", "--soc", "imx6", "--in", str(tmp_path / "bad.imx")]), 1,
                   "does not match")


def res_hash(text: str) -> str:
    return text.rsplit("SRK_HASH ", 1)[1].strip()


def test_flash_bin_and_errors(softhsm, tmp_path):
    token = softhsm
    srks = [token.generate("p256", f"SRK{i}") for i in range(1, 5)]
    pin = ["--pin-file", str(token.pin_file)]
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    ok(run_cli(["hab", "cert", "--key", srks[1], "--issuer-key", srks[1], "--cn", "SRK2", "--serial", "2", "--ca",
                "--out", str(tmp_path / "srk2.pem"), *pin], token, env))
    keys = {n: token.generate("p256", n) for n in ("CSF", "IMG")}
    for n, uri in keys.items():
        ok(run_cli(["hab", "cert", "--key", uri, "--issuer-key", srks[1], "--issuer-cert", str(tmp_path / "srk2.pem"),
                    "--cn", n, "--serial", str(len(n) + ord(n[0])), "--out", str(tmp_path / f"{n}.pem"), *pin],
                   token, env))
    table = tmp_path / "table.bin"
    ok(run_cli(["hab", "srk", "--keys", srks[0], "--keys", srks[1], "--keys", srks[2], "--keys", srks[3],
                "--out-table", str(table), *pin], token))
    flash = make_flash_bin(tmp_path)
    out = tmp_path / "flash-signed.bin"
    base = ["hab", "sign", "--soc", "imx8m", "--in", str(flash), "--srk-table", str(table), "--csf-key", keys["CSF"],
            "--csf-cert", str(tmp_path / "CSF.pem"), "--img-key", keys["IMG"], "--img-cert", str(tmp_path / "IMG.pem"),
            "--hab-version", "4.5", *pin]
    res = json.loads(ok(run_cli([*base, "--srk-index", "2", "--out", str(out), "--json"], token, env)))
    assert [p["part"] for p in res["parts"]] == ["spl", "fit"]
    report = json.loads(ok(run_cli(["hab", "verify", "--soc", "imx8m", "--in", str(out), "--srk-table", str(table),
                                    "--json"])))
    assert [p["srk_index"] for p in report["parts"]] == [2, 2]
    assert report["trust_anchor"] == ["--srk-table"] and report["parts_not_checked"] == []

    # Errors are one line, and leave no output behind.
    bad_out = tmp_path / "never.bin"
    one_line_error(run_cli([*base, "--srk-index", "1", "--out", str(bad_out)], token, env), 1,
                   "not signed by the selected SRK")
    one_line_error(run_cli([*base, "--srk-index", "2", "--out", str(bad_out), "--hab-version", "5.0"], token, env), 2,
                   "not supported")
    (tmp_path / "junk.bin").write_bytes(os.urandom(8192))
    base[base.index(str(flash))] = str(tmp_path / "junk.bin")
    one_line_error(run_cli([*base, "--srk-index", "2", "--out", str(bad_out)], token, env), 1, "no IVT")
    one_line_error(run_cli([*base, "--srk-index", "2", "--out", str(bad_out), "--spl-blocks", "0x1 0x2"], token,
                           env), 2, "address offset length")
    assert not bad_out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    shutil.rmtree(tmp_path / "output", ignore_errors=True)


def test_fast_authentication(softhsm, tmp_path):
    token = softhsm
    pin = ["--pin-file", str(token.pin_file)]
    srks = [token.generate("rsa2048", f"SRK{i}") for i in range(1, 5)]
    ok(run_cli(["hab", "cert", "--key", srks[0], "--issuer-key", srks[0], "--cn", "SRK1", "--serial", "1",
                "--no-ca", "--out", str(tmp_path / "srk1.pem"), *pin], token, {"SOURCE_DATE_EPOCH": EPOCH}))
    table = tmp_path / "table.bin"
    ok(run_cli(["hab", "srk", "--keys", ",".join(srks), "--no-ca", "--out-table", str(table), *pin], token))
    image = make_uboot_imx(tmp_path)
    out = tmp_path / "signed.imx"
    ok(run_cli(["hab", "sign", "--soc", "imx7", "--in", str(image), "--out", str(out), "--srk-table", str(table),
                "--srk-index", "1", "--srk-key", srks[0], "--srk-cert", str(tmp_path / "srk1.pem"), *pin], token))
    report = json.loads(ok(run_cli(["hab", "verify", "--soc", "imx7", "--in", str(out), "--srk-table", str(table),
                                    "--json"])))
    assert report["parts"][0]["srk_index"] == 1
    res = subprocess.run(["csf_parser", "-s", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout
    one_line_error(run_cli(["hab", "sign", "--soc", "imx7", "--in", str(image), "--out", str(tmp_path / "x.imx"),
                            "--srk-table", str(table), "--srk-index", "1", "--srk-key", srks[0], *pin], token), 2,
                   "fast authentication")


def test_flash_bin_verify_checks_every_part(softhsm, tmp_path):
    """`hab verify` on an i.MX 8M flash.bin checks the SPL part and the FIT part (U-Boot proper + TF-A),
    and refuses an image that lost or altered the FIT part; `--parts spl` checks the SPL alone and
    says so. The signed parts are read back by NXP's csf_parser and openssl cms."""
    token = softhsm
    pin = ["--pin-file", str(token.pin_file)]
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    srk = token.generate("rsa2048", "SRK1")
    ok(run_cli(["hab", "cert", "--key", srk, "--issuer-key", srk, "--cn", "SRK1", "--serial", "1", "--ca",
                "--out", str(tmp_path / "srk1.pem"), *pin], token, env))
    keys = {n: token.generate("rsa2048", n) for n in ("CSF1_1", "IMG1_1")}
    for serial, (n, uri) in enumerate(keys.items(), 2):
        ok(run_cli(["hab", "cert", "--key", uri, "--issuer-key", srk, "--issuer-cert", str(tmp_path / "srk1.pem"),
                    "--cn", n, "--serial", str(serial), "--out", str(tmp_path / f"{n}.pem"), *pin], token, env))
    table, fuse = tmp_path / "table.bin", tmp_path / "fuse.bin"
    ok(run_cli(["hab", "srk", "--keys", srk, "--out-table", str(table), "--out-fuse", str(fuse), *pin], token))
    flash = make_flash_bin(tmp_path)
    signed = tmp_path / "flash-signed.bin"
    res = json.loads(ok(run_cli(["hab", "sign", "--soc", "imx8m", "--in", str(flash), "--out", str(signed),
                                 "--srk-table", str(table), "--srk-index", "1", "--csf-key", keys["CSF1_1"],
                                 "--csf-cert", str(tmp_path / "CSF1_1.pem"), "--img-key", keys["IMG1_1"],
                                 "--img-cert", str(tmp_path / "IMG1_1.pem"), "--hab-version", "4.3", "--json", *pin],
                                token, env)))
    spl, fit = res["parts"]
    assert (spl["part"], fit["part"]) == ("spl", "fit")
    image = signed.read_bytes()

    # The oracle: csf_parser reads the FIT CSF (SRK table, certificates, signatures) and openssl
    # accepts its data signature over the FIT blocks.
    csf_off = int(fit["csf_offset"], 16)
    (tmp_path / "fit-csf.bin").write_bytes(image[csf_off : csf_off + fit["csf_size"]])
    shutil.rmtree(tmp_path / "output", ignore_errors=True)
    parsed = subprocess.run(["csf_parser", "-c", "fit-csf.bin"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    assert (tmp_path / "output" / "SRKTable.bin").read_bytes() == table.read_bytes()
    blocks = [tuple(int(x, 16) for x in b.split()) for b in fit["blocks"]]
    (tmp_path / "fit-blocks.bin").write_bytes(b"".join(image[o : o + n] for _, o, n in blocks))
    cms = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "output/sig1.bin",
                          "-content", "fit-blocks.bin", "-noverify", "-certfile", "IMG1_1.pem", "-out", "/dev/null"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cms.returncode == 0, cms.stderr

    def verify(path, *extra):
        return run_cli(["hab", "verify", "--soc", "imx8m", "--in", str(path), "--srk-table", str(table), *extra])

    text = ok(verify(signed)).strip()
    assert text.startswith(f"OK {signed}: checked spl (SRK 1), fit (SRK 1): every part of the imx8m layout;")
    assert res_hash(text) == fuse.read_bytes().hex()
    # The fused value as the anchor, from the fuse file or as hex; without an anchor, exit 3.
    ok(run_cli(["hab", "verify", "--soc", "imx8m", "--in", str(signed), "--srk-fuse", str(fuse)]))
    ok(run_cli(["hab", "verify", "--soc", "imx8m", "--in", str(signed), "--srk-hash", fuse.read_bytes().hex()]))
    bare = run_cli(["hab", "verify", "--soc", "imx8m", "--in", str(signed)])
    assert bare.returncode == 3, bare.stderr.decode()
    assert bare.stdout.decode().startswith("OK (signature only: no trust anchor given) ")
    one_line_error(run_cli(["hab", "verify", "--soc", "imx8m", "--in", str(signed), "--srk-hash", "00" * 32]), 1,
                   "not the expected SRK_HASH")

    fit_off, ivt_off = blocks[0][1], int(fit["ivt_offset"], 16)
    uboot_off, uboot_len = next((o, n) for a, o, n in blocks if a == 0x40200000)
    sig_pos = csf_off + fit["csf_size"] - 8  # inside the RSA signature that ends the FIT CSF (then <4 bytes pad)

    def flip(pos: int) -> bytes:
        return image[:pos] + bytes([image[pos] ^ 0x01]) + image[pos + 1 :]

    attacks = {
        "cut": (image[:fit_off], "fit part missing"),
        "truncated": (image[: uboot_off + uboot_len // 2], "lies outside the image"),
        "shifted": (image[:fit_off] + b"\0" + image[fit_off:], "fit part missing"),
        "ivt-zeroed": (image[:ivt_off] + bytes(32) + image[ivt_off + 32 :], "fit part: no IVT"),
        "uboot-overwritten": (image[: uboot_off + 0x200] + b"\x90" * 32 + image[uboot_off + 0x220 :],
                              "Authenticate Data (the image blocks): CMS message digest does not match"),
        "csf-command-flipped": (flip(csf_off + 0x10), "fit part"),
        "csf-signature-flipped": (flip(sig_pos), "CMS signature does not verify"),
    }
    for name, (data, message) in attacks.items():
        bad = tmp_path / f"{name}.bin"
        bad.write_bytes(data)
        err = one_line_error(verify(bad), 1, message)
        assert "fit part" in err, (name, err)
        # --parts spl checks the SPL part alone, and the OK line says the FIT part was not checked.
        text = ok(verify(bad, "--parts", "spl")).strip()
        assert text.startswith(f"OK {bad}: checked spl (SRK 1) only, not fit (--parts);"), text
    report = json.loads(ok(verify(tmp_path / "cut.bin", "--parts", "spl", "--json")))
    assert report["parts_checked"] == ["spl"] and report["parts_not_checked"] == ["fit"]
    one_line_error(verify(signed, "--parts", "uboot"), 2, "no part 'uboot'")


def test_hab_verify_refuses_bad_input_in_one_line(tmp_path):
    """Empty, random, truncated and cut-up inputs: one line and exit 1, never a traceback."""
    flash = make_flash_bin(tmp_path)
    data = flash.read_bytes()
    rng = random.Random(12)
    inputs = {"empty": b"", "random": rng.randbytes(70_000), "header-only": data[:0x40],
              "cut-in-spl": data[: len(data) // 5], "ivt-garbage": data[:0x20] + rng.randbytes(0x20) + data[0x40:],
              "unsigned": data}
    for name, content in inputs.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(content)
        for soc in ("imx8m", "imx6"):
            res = run_cli(["hab", "verify", "--soc", soc, "--in", str(path)])
            one_line_error(res, 1)


@pytest.mark.parametrize("soc,image,words", [
    ("imx8m", "u-boot.imx", "loads the image to DDR (self 0x877ff400), as an i.MX 6/7 u-boot.imx does"),
    ("imx6", "flash.bin", "a second HAB part (IVT at 0x58c00) that a imx6 u-boot.imx does not have"),
    ("imx7", "flash.bin", "for an i.MX 8M flash.bin give --soc imx8m"),
])
def test_an_image_of_the_other_soc_family_is_refused(tmp_path, soc, image, words):
    """Refused from the image alone, before any token is opened (the key URIs name no token)."""
    path = make_uboot_imx(tmp_path) if image == "u-boot.imx" else make_flash_bin(tmp_path)
    (tmp_path / "table.bin").write_bytes(b"\0" * 64)
    (tmp_path / "cert.pem").write_bytes(b"unused")
    out = tmp_path / "signed.bin"
    for extra in ([], ["--parts", "spl"] if soc == "imx8m" else []):
        res = run_cli(["hab", "sign", "--soc", soc, "--in", str(path), "--out", str(out), "--srk-table",
                       str(tmp_path / "table.bin"), "--srk-index", "1", "--csf-key", "pkcs11:token=none;object=c",
                       "--csf-cert", str(tmp_path / "cert.pem"), "--img-key", "pkcs11:token=none;object=i",
                       "--img-cert", str(tmp_path / "cert.pem"), *extra],
                      env={"SEGWAY_PKCS11_MODULE": "/nonexistent/module.so"})
        one_line_error(res, 1, words)
        assert not out.exists()
    one_line_error(run_cli(["hab", "verify", "--soc", soc, "--in", str(path)]), 1, words)
