#!/usr/bin/env python3
"""dm-verity: `segway-sign verity sign` through p11-kit vs `veritysetup format` vs `sha256sum`.

Same image, same run, same parameters (4 KiB blocks, SHA-256, fixed salt, superblock, separate hash
file). segway-sign runs as the CLI a CI job runs: key in a SoftHSM token behind a p11-kit server
(started here, stopped by PID), so the time includes Python start-up, token login, the hash tree,
the PKCS#7 signature and writing the outputs. Prints the median of N runs, the ratio to veritysetup
(target <= 1.10) and the peak RSS of segway-sign (memory must not grow with the image).

    .venv/bin/python benchmarks/verity.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from segway_sign.hsm import PinSource, devhsm, keygen, open_private_key, open_session

REPO = Path(__file__).resolve().parents[1]
SEGWAY_SIGN = str(REPO / ".venv" / "bin" / "segway-sign")
P11KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
SALT = "5e" * 32
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def timed(args: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall time and the child's peak RSS (KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    res = subprocess.run(args, capture_output=True, env=env, timeout=3600)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{args[0]} failed: {res.stderr.decode(errors='replace').strip()}")
    return elapsed, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def make_image(path: Path, size: int) -> None:
    chunk = 8 << 20
    with open(path, "wb") as f:
        for _ in range(size // chunk):
            f.write(os.urandom(chunk))


def token(root: Path):
    conf = devhsm.write_config(root)
    label = f"bench{secrets.token_hex(2)}"
    pin = secrets.token_hex(6)
    pin_file = root / "pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    devhsm.init_token(conf, label, secrets.token_hex(6), pin)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    session = open_session(f"pkcs11:token={label}", module_path=devhsm.SOFTHSM_MODULE,
                           pin=PinSource(file=pin_file))
    uri = str(keygen.generate(session, "rsa3072", "verity").uri)
    key = open_private_key(uri, module_path=devhsm.SOFTHSM_MODULE, pin=PinSource(file=pin_file))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "verity bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return conf, label, pin_file, uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.10)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="verity-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        img = tmp / "rootfs.img"
        make_image(img, opts.size_mib << 20)
        conf, label, pin_file, uri = token(tmp)
        sock = tmp / "p11kit.sock"
        server = subprocess.Popen(["p11-kit", "server", "--provider", devhsm.SOFTHSM_MODULE, "-f", "-n", str(sock),
                                   f"pkcs11:token={label}"], env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while not sock.exists():
                if server.poll() is not None:
                    sys.exit("p11-kit server did not start")
                time.sleep(0.05)
            env = dict(os.environ, P11_KIT_SERVER_ADDRESS=f"unix:path={sock}", SEGWAY_PKCS11_MODULE=P11KIT_CLIENT)
            results: dict[str, list[float]] = {"sha256sum": [], "veritysetup format": [], "segway-sign verity sign": []}
            peak = 0
            for i in range(opts.runs):
                results["sha256sum"].append(timed(["sha256sum", str(img)])[0])
                hashfile = tmp / "vs.hash"
                hashfile.unlink(missing_ok=True)
                results["veritysetup format"].append(timed(
                    ["veritysetup", "format", str(img), str(hashfile), f"--salt={SALT}", f"--uuid={UUID}"])[0])
                out = tmp / f"out{i}"
                t, rss = timed([SEGWAY_SIGN, "verity", "sign", "--key", uri, "--cert", str(tmp / "cert.pem"),
                                "--in", str(img), "--out-dir", str(out), "--salt", SALT, "--uuid", UUID,
                                "--pin-file", str(pin_file), "--no-progress"], env)
                results["segway-sign verity sign"].append(t)
                peak = max(peak, rss)
                if (out / "rootfs.hashtree").read_bytes() != hashfile.read_bytes():
                    sys.exit("segway-sign's tree differs from veritysetup's")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med["veritysetup format"]
    print(f"image: {opts.size_mib} MiB, {opts.runs} runs, median wall time")
    for name, value in med.items():
        print(f"  {name:26s} {value:7.2f} s  {value / base:5.2f}x veritysetup")
    print(f"  segway-sign peak RSS: {peak / 1024:.0f} MiB")
    ratio = med["segway-sign verity sign"] / base
    print(f"target <= {opts.target:.2f}x: {'met' if ratio <= opts.target else 'NOT met'} ({ratio:.2f}x)")
    sys.exit(0 if ratio <= opts.target else 1)


if __name__ == "__main__":
    main()
