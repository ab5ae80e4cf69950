#!/usr/bin/env python3
"""HAB (i.MX 6/7/8M) and AHAB signing: segway-sign against the vendor tools, same inputs, same run.

Baselines use file keys, as the vendor tools need them:
  * SRK table + fuse: NXP ``srktool`` (C, Debian imx-code-signing-tool 3.3.1);
  * HAB CSF for a u-boot.imx: NXP ``cst`` (C, same package; Debian's build needs libcrypto and a
    minimal libpw preloaded to run at all, see tests/signing/formats/hab/test_hab.py);
  * AHAB container: SPSDK ``nxpimage ahab export`` with a file signer (Python; NXP's AHAB tool —
    Debian's cst cannot run its AHAB path), from .venv/oracle-spsdk.
segway-sign runs in-process with the same file keys (library cost) and as the CLI with the keys in a
SoftHSM token (what a build does). Prints the median of N runs and the ratio to the baseline.

    .venv/bin/python -m benchmarks.hab [--runs N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import tempfile
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from benchmarks.timing import median_time
from segway_sign.formats import ahab
from segway_sign.formats.hab import image as hab
from segway_sign.formats.hab import pki as hab_pki
from segway_sign.formats.hab import srk as hab_srk
from tests.helpers import SoftHsmToken, run_cli  # the tests' helpers: a real SoftHSM token

TOP = Path(__file__).resolve().parents[1]

SIGNING_TIME = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
NXPIMAGE = TOP / ".venv" / "oracle-spsdk" / "bin" / "nxpimage"
LIBCRYPTO = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
LIBPW = r"""
#include <stdint.h>
#include <string.h>
int32_t get_key_file(const char *c, char *k)
{ const char *l = NULL, *p = c; while ((p = strstr(p, "_crt")) != NULL) l = p++;
  strcpy(k, c); if (l) memcpy(k + (l - c), "_key", 4); return 0; }
int get_passcode_to_key_file(char *b, int s, int r, void *u) { (void)b; (void)s; (void)r; (void)u; return 0; }
"""


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, timeout=600, **kw)
    if res.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {res.stderr.decode(errors='replace')[-500:]}")
    return res


def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hab-") as tmpdir:
        root = Path(tmpdir)
        # ---- a CST-style PKI with file keys, and the same kind of keys in a SoftHSM token
        srk_keys = [rsa.generate_private_key(65537, 2048) for _ in range(4)]
        srk_certs = [hab_pki.issue_certificate(k.public_key(), f"SRK{i}", k, None, ca=True, serial=i + 1,
                                               not_before=SIGNING_TIME) for i, k in enumerate(srk_keys)]
        csf_key, img_key = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
        csf_cert = hab_pki.issue_certificate(csf_key.public_key(), "CSF1_1", srk_keys[0], srk_certs[0], ca=False,
                                             serial=10, not_before=SIGNING_TIME)
        img_cert = hab_pki.issue_certificate(img_key.public_key(), "IMG1_1", srk_keys[0], srk_certs[0], ca=False,
                                             serial=11, not_before=SIGNING_TIME)
        for name, key, cert in [*((f"SRK{i + 1}", k, c) for i, (k, c) in enumerate(zip(srk_keys, srk_certs))),
                                ("CSF1_1", csf_key, csf_cert), ("IMG1_1", img_key, img_cert)]:
            (root / f"{name}_crt.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (root / f"{name}_key.pem").write_bytes(pem_key(key))
        certs = ",".join(f"SRK{i}_crt.pem" for i in range(1, 5))

        # ---- SRK table + fuse
        base = median_time(lambda: run(["srktool", "-h", "4", "-t", "t.bin", "-e", "f.bin", "-d", "sha256", "-c",
                                        certs, "-f", "1"], cwd=root), args.runs)
        pubs = [c.public_key() for c in srk_certs]
        ours = median_time(lambda: hab_srk.fuse_file(hab_srk.srk_hash(hab_srk.srk_table(pubs))), args.runs)
        rows.append(("HAB SRK table+fuse", "srktool", base, ours, None))

        # ---- HAB CSF for a u-boot.imx
        (root / "u-boot.bin").write_bytes(os.urandom(600_000))
        (root / "imx.cfg").write_text("IMAGE_VERSION 2\nBOOT_FROM sd\nCSF 0x2000\n")
        run(["mkimage", "-n", "imx.cfg", "-T", "imximage", "-e", "0x87800000", "-d", "u-boot.bin", "u-boot.imx"],
            cwd=root)
        image = (root / "u-boot.imx").read_bytes()
        table = hab_srk.srk_table(pubs)
        (root / "SRK_table.bin").write_bytes(table)
        (_, ivt), = hab.locate_parts(image, "imx6")
        blk = hab.loader_blocks(ivt)[0]
        (root / "csf.txt").write_text(
            "[Header]\n Version = 4.2\n Hash Algorithm = sha256\n Engine = CAAM\n Engine Configuration = 0\n"
            " Certificate Format = X509\n Signature Format = CMS\n[Install SRK]\n File = \"SRK_table.bin\"\n"
            " Source index = 0\n[Install CSFK]\n File = \"CSF1_1_crt.pem\"\n[Authenticate CSF]\n[Install Key]\n"
            " Verification index = 0\n Target index = 2\n File = \"IMG1_1_crt.pem\"\n[Authenticate Data]\n"
            f" Verification index = 2\n Blocks = 0x{blk.address:x} 0x{blk.offset:x} 0x{blk.length:x} \"u-boot.imx\"\n")
        (root / "libpw.c").write_text(LIBPW)
        run(["gcc", "-shared", "-fPIC", "-o", "libpw.so", "libpw.c"], cwd=root)
        cst_env = dict(os.environ, LD_PRELOAD=f"{LIBCRYPTO} {root / 'libpw.so'}")
        base = median_time(lambda: run(["cst", "-i", "csf.txt", "-o", "csf.bin"], cwd=root, env=cst_env), args.runs)
        keys = hab.HabKeys(table, 0, csf_key, csf_cert, img_key, img_cert)
        ours = median_time(lambda: hab.sign_image(image, "imx6", keys, signing_time=SIGNING_TIME), args.runs)

        token = SoftHsmToken(root / "softhsm")
        pin = ["--pin-file", str(token.pin_file)]
        t_srks = [token.generate("rsa2048", f"SRK{i}") for i in range(1, 5)]
        t_csf, t_img = token.generate("rsa2048", "CSF"), token.generate("rsa2048", "IMG")
        env = {"SOURCE_DATE_EPOCH": "1704067200"}
        run_cli(["hab", "srk", "--keys", ",".join(t_srks), "--out-table", str(root / "t_table.bin"), *pin], token)
        run_cli(["hab", "cert", "--key", t_srks[0], "--issuer-key", t_srks[0], "--cn", "SRK1", "--serial", "1",
                 "--ca", "--out", str(root / "t_srk1.pem"), *pin], token, env)
        for n, uri in (("csf", t_csf), ("img", t_img)):
            run_cli(["hab", "cert", "--key", uri, "--issuer-key", t_srks[0], "--issuer-cert", str(root / "t_srk1.pem"),
                     "--cn", n, "--serial", str(len(n) + ord(n[0])), "--out", str(root / f"t_{n}.pem"), *pin],
                    token, env)
        cli = ["hab", "sign", "--soc", "imx6", "--in", str(root / "u-boot.imx"), "--out", str(root / "signed.imx"),
               "--force", "--srk-table", str(root / "t_table.bin"), "--srk-index", "1", "--csf-key", t_csf,
               "--csf-cert", str(root / "t_csf.pem"), "--img-key", t_img, "--img-cert", str(root / "t_img.pem"), *pin]

        def hab_cli():
            res = run_cli(cli, token, env)
            if res.returncode:
                raise SystemExit(res.stderr.decode())
        rows.append(("HAB CSF u-boot.imx", "cst", base, ours, median_time(hab_cli, args.runs)))

        # ---- AHAB container (i.MX93), P-256
        if NXPIMAGE.exists():
            ec_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
            for i, k in enumerate(ec_keys):
                (root / f"srk{i}.pub").write_bytes(k.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            (root / "signer.pem").write_bytes(pem_key(ec_keys[0]))
            (root / "app.bin").write_bytes(os.urandom(600_000))
            container = {"srk_set": "none", "used_srk_id": 0, "srk_revoke_mask": "0x00", "fuse_version": 0,
                         "sw_version": 0, "images": [{"image_path": "app.bin", "load_address": "0x2049A000",
                                                      "entry_point": "0x2049A000", "image_type": "executable",
                                                      "core_id": "cortex-a55", "hash_type": "sha256"}]}
            config = {"family": "mimx9352", "revision": "latest", "target_memory": "standard",
                      "output": "unsigned.bin", "output_format": "bin", "containers": [{"container": container}]}
            (root / "unsigned.yaml").write_text(yaml.safe_dump(config))
            spsdk_env = dict(os.environ, HOME=str(root))
            run([str(NXPIMAGE), "ahab", "export", "-c", "unsigned.yaml"], cwd=root, env=spsdk_env)
            container.update(srk_set="oem", signer="type=file;file_path=signer.pem",
                             srk_table={"flag_ca": False, "srk_array": [f"srk{i}.pub" for i in range(4)]})
            config["output"] = "signed_ref.bin"
            (root / "signed.yaml").write_text(yaml.safe_dump(config))
            base = median_time(lambda: run([str(NXPIMAGE), "ahab", "export", "-c", "signed.yaml"], cwd=root,
                                           env=spsdk_env), args.runs)
            unsigned = (root / "unsigned.bin").read_bytes()
            a_table = ahab.srk_table([k.public_key() for k in ec_keys])
            ours = median_time(lambda: ahab.sign_image(unsigned, a_table, 0, ec_keys[0]), args.runs)
            t_ec = [token.generate("p256", f"ASRK{i}") for i in range(4)]
            run_cli(["ahab", "srk", "--keys", ",".join(t_ec), "--out-table", str(root / "a_table.bin"), *pin], token)
            a_cli = ["ahab", "sign", "--in", str(root / "unsigned.bin"), "--out", str(root / "a_signed.bin"), "--force",
                     "--srk-table", str(root / "a_table.bin"), "--srk-index", "1", "--key", t_ec[0], *pin]

            def ahab_cli():
                res = run_cli(a_cli, token)
                if res.returncode:
                    raise SystemExit(res.stderr.decode())
            rows.append(("AHAB container i.MX93", "nxpimage", base, ours, median_time(ahab_cli, args.runs)))
        else:
            print(f"(AHAB skipped: {NXPIMAGE} missing)")

    print(f"median of {args.runs} runs; ratio = segway-sign / baseline (lower is faster)")
    print(f"{'format':24} {'baseline':10} {'base ms':>9} {'lib ms':>9} {'ratio':>7} {'cli+hsm ms':>11} {'ratio':>7}")
    for name, tool, b, lib, cli_t in rows:
        cli_s = f"{cli_t * 1e3:11.2f} {cli_t / b:7.3f}" if cli_t is not None else f"{'-':>11} {'-':>7}"
        print(f"{name:24} {tool:10} {b * 1e3:9.2f} {lib * 1e3:9.3f} {lib / b:7.3f} {cli_s}")


if __name__ == "__main__":
    main()
