"""FIT signing speed: segway-sign through p11-kit remoting vs ``mkimage -F`` with a PEM key vs ``sha256sum``.

Same run, same machine, same files (64 MiB and 512 MiB FITs). Prints wall-time ratios and the bytes
segway-sign sent to the token, which stay constant whatever the FIT size.

    .venv/bin/python benchmarks/fit_sign.py [--sizes 64,512] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts")]

from fit_fixtures import EPOCH, import_rsa_key, make_unsigned_fit, pem_key_pair  # noqa: E402
from helpers import P11KitToken, SEGWAY_SIGN  # noqa: E402
from segway_sign.hsm import module  # noqa: E402


def best_of(runs: int, func) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,512", help="FIT sizes in MiB (comma-separated)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env_epoch = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    with tempfile.TemporaryDirectory(prefix="segway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        token = P11KitToken(tmp / "p11kit")
        try:
            key = pem_key_pair(tmp / "keys")
            uri = import_rsa_key(token, key, "dev")
            module.reset()
            env = dict(token.run_env(), SEGWAY_PKCS11_MODULE=token.module, SOURCE_DATE_EPOCH=EPOCH)
            print(f"{'size':>8} {'sha256sum':>10} {'mkimage':>10} {'segway':>10} {'segway/mkimage':>15} "
                  f"{'segway/sha256sum':>17} {'bytes to token':>15}")
            for size in (int(s) for s in args.sizes.split(",")):
                unsigned = make_unsigned_fit(tmp / f"fit{size}", kernel_size=size << 20)
                work = tmp / "mk.itb"

                def mkimage():
                    shutil.copyfile(unsigned, work)
                    subprocess.run(["mkimage", "-F", "-k", str(tmp / "keys"), str(work)], check=True,
                                   capture_output=True, env=env_epoch)

                out = tmp / "sw.itb"
                result = {}

                def segway():
                    res = subprocess.run([SEGWAY_SIGN, "fit", "sign", "--key", uri, "--in", str(unsigned), "--out",
                                          str(out), "--force", "--json", "--pin-file", str(token.pin_file)],
                                         check=True, capture_output=True, env=env)
                    result.update(json.loads(res.stdout))

                def sha256sum():
                    subprocess.run(["sha256sum", str(unsigned)], check=True, capture_output=True)

                t_sha, t_mk, t_sw = best_of(args.runs, sha256sum), best_of(args.runs, mkimage), best_of(args.runs, segway)
                print(f"{size:>6}Mi {t_sha:>9.2f}s {t_mk:>9.2f}s {t_sw:>9.2f}s {t_sw / t_mk:>14.2f}x "
                      f"{t_sw / t_sha:>16.2f}x {result['bytes_sent_to_token']:>14}B")
        finally:
            module.reset()
            token.stop()
    print("target: segway/mkimage <= 1.10x; bytes to token: one DigestInfo (51 B) per signature at any size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
