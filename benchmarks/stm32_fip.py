#!/usr/bin/env python3
"""STM32 header and FIP/TBBR signing: segway-sign against the C tools, same inputs, same run.

Baselines use a file key, as the C tools need one:
  * STM32: ``mkimage -T stm32image`` (header) + ``openssl dgst -sha256 -sign`` over the signed range
    (mkimage cannot sign; ST's signing tool is closed source);
  * FIP:   ``cert_create -n`` (Debian's generic TBBR build, so without the STM32MP config certificate)
    + ``fiptool create``.
segway-sign runs in-process with a file key (library cost only) and as the CLI with the key in a
SoftHSM token (what a build does). Prints the median of N runs and the ratio to the baseline.

    .venv/bin/python -m benchmarks.stm32_fip [--runs N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from benchmarks.timing import median_time
from segway_sign.formats.stm32 import header as stm32
from segway_sign.formats.tfa import fip
from segway_sign.hsm import PinSource, devhsm, keygen, open_session

REPO = Path(__file__).resolve().parents[1]
SEGWAY_SIGN = str(REPO / ".venv" / "bin" / "segway-sign")
FIP_IMAGES = {"tos-fw": 28 << 10, "tos-fw-extra1": 400 << 10, "tos-fw-extra2": 200 << 10,
              "nt-fw": 900 << 10, "hw-config": 90 << 10, "fw-config": 1 << 10}


def run(args: list[str], env: dict | None = None) -> None:
    res = subprocess.run(args, capture_output=True, env=env, timeout=600)
    if res.returncode != 0:
        sys.exit(f"{args[0]} failed: {res.stderr.decode(errors='replace').strip()}")


def make_token(root: Path) -> tuple[dict, str, Path]:
    conf = devhsm.write_config(root)
    pin = secrets.token_hex(6)
    devhsm.init_token(conf, "bench", secrets.token_hex(6), pin)
    pin_file = root / "user.pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    env = dict(os.environ, SOFTHSM2_CONF=str(conf), SEGWAY_PKCS11_MODULE=devhsm.SOFTHSM_MODULE)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    session = open_session("pkcs11:token=bench", module_path=devhsm.SOFTHSM_MODULE, pin=PinSource(file=pin_file))
    uri = str(keygen.generate(session, "p256", "bench-rot").uri)
    return env, uri, pin_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="segway-bench-") as tmpdir:
        tmp = Path(tmpdir)
        key_pem = tmp / "rot.pem"
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key_pem)])
        file_key = serialization.load_pem_private_key(key_pem.read_bytes(), None)
        env, uri, pin_file = make_token(tmp / "token")
        rows = []

        # --- STM32 header v1 (BL2 of 128 KiB) ---
        bl2 = tmp / "bl2.bin"
        bl2.write_bytes(os.urandom(128 << 10))

        def stm32_c():
            run(["mkimage", "-T", "stm32image", "-a", "0x2ffc2500", "-e", "0x2ffc2500", "-d", str(bl2),
                 str(tmp / "c.stm32")])
            data = (tmp / "c.stm32").read_bytes()
            (tmp / "range.bin").write_bytes(data[72:])
            run(["openssl", "dgst", "-sha256", "-sign", str(key_pem), "-out", str(tmp / "sig.der"),
                 str(tmp / "range.bin")])

        def stm32_lib():
            stm32.sign(stm32.create(bl2.read_bytes(), entry_point=0x2FFC2500), file_key)

        def stm32_cli():
            run([SEGWAY_SIGN, "stm32", "sign", "--key", uri, "--pin-file", str(pin_file), "--in", str(bl2),
                 "--entry", "0x2ffc2500", "--out", str(tmp / "s.stm32"), "--force"], env)

        base = median_time(stm32_c, runs)
        rows.append(("stm32 v1", "mkimage + openssl (file key)", base, base))
        rows.append(("stm32 v1", "segway library (file key)", median_time(stm32_lib, runs), base))
        rows.append(("stm32 v1", "segway-sign CLI (SoftHSM)", median_time(stm32_cli, runs), base))

        # --- FIP with the TBBR chain ---
        paths = {}
        for name, size in FIP_IMAGES.items():
            paths[name] = tmp / f"{name}.bin"
            paths[name].write_bytes(os.urandom(size))
        image_args = [a for n, p in paths.items() for a in (f"--{n}", str(p))]

        def fip_c():
            certs = ["--trusted-key-cert", "tk.crt", "--tos-fw-key-cert", "tosk.crt", "--tos-fw-cert", "tosc.crt",
                     "--nt-fw-key-cert", "ntk.crt", "--nt-fw-cert", "ntc.crt"]
            certs = [str(tmp / a) if a.endswith(".crt") else a for a in certs]
            run(["cert_create", "-n", "--rot-key", str(key_pem), "--tfw-nvctr", "0", "--ntfw-nvctr", "0",
                 "--key-alg", "ecdsa", "--hash-alg", "sha256", *image_args, *certs])
            run(["fiptool", "create", *image_args, *certs, str(tmp / "c-fip.bin")])

        def fip_lib():
            fip.sign_images({n.replace("-", "_"): p.read_bytes() for n, p in paths.items()}, file_key)

        def fip_cli():
            run([SEGWAY_SIGN, "fip", "sign", "--rot-key", uri, "--pin-file", str(pin_file), *image_args,
                 "--out", str(tmp / "s-fip.bin"), "--force"], env)

        base = median_time(fip_c, runs)
        rows.append(("fip tbbr", "cert_create + fiptool (file key)", base, base))
        rows.append(("fip tbbr", "segway library (file key)", median_time(fip_lib, runs), base))
        rows.append(("fip tbbr", "segway-sign CLI (SoftHSM)", median_time(fip_cli, runs), base))

    print(f"median of {runs} runs")
    print(f"{'job':10} {'signer':34} {'seconds':>9} {'ratio':>7}")
    for job, signer, seconds, baseline in rows:
        print(f"{job:10} {signer:34} {seconds:9.4f} {seconds / baseline:6.2f}x")


if __name__ == "__main__":
    main()
