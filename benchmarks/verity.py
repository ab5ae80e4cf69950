"""dm-verity: ``segway-sign verity sign`` (key in a SoftHSM token behind p11-kit) against
``veritysetup format`` and the hashing limit, same image, same run.

Same parameters for both (4 KiB blocks, SHA-256, fixed salt, superblock, separate hash file); the
time of segway-sign is the CLI a CI job runs: Python start-up, token login, the tree, the PKCS#7
signature and the durable outputs (the time it spends in fsync is printed). Target: segway-sign
<= 0.8x veritysetup in the same run, tree byte-identical (checked every run). The limit printed
beside them is ``openssl dgst -sha256`` over the image: one core hashing the bytes once (a
verity tree hashes every 4 KiB block separately, with the salt, so it costs more per byte, and
segway-sign uses both cores). Also printed: segway-sign's peak RSS (it must not grow with the image).

    .venv/bin/python -m benchmarks.verity [--size-mib 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from benchmarks import timing
from benchmarks.p11kit import p11kit_token
from segway_sign.hsm import PinSource, devhsm, open_private_key

SALT = "5e" * 32
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
TARGET = 0.8


def make_image(path: Path, size: int) -> None:
    chunk = 8 << 20
    with open(path, "wb") as f:
        for _ in range(size // chunk):
            f.write(os.urandom(chunk))


def certificate(uri: str, pin_file: Path, path: Path) -> None:
    key = open_private_key(uri, module_path=devhsm.SOFTHSM_MODULE, pin=PinSource(file=pin_file))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "verity bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()
    print(f"before: {timing.load()}")
    s = {k: timing.Samples(k) for k in ("openssl", "veritysetup", "segway", "segway fsync", "segway rss")}
    with tempfile.TemporaryDirectory(prefix="verity-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        img = tmp / "rootfs.img"
        make_image(img, opts.size_mib << 20)
        with p11kit_token(tmp / "token") as token:
            uri = token.generate("rsa3072", "verity")
            certificate(uri, token.pin_file, tmp / "cert.pem")
            for i in range(opts.runs):
                s["openssl"].add(timing.openssl_dgst(img))
                hashfile = tmp / "vs.hash"
                hashfile.unlink(missing_ok=True)
                s["veritysetup"].add(timing.run(["veritysetup", "format", str(img), str(hashfile), f"--salt={SALT}",
                                                 f"--uuid={UUID}"]).seconds)
                out = tmp / f"out{i}"
                child, fsync = timing.segway_with_fsync_time(
                    ["verity", "sign", "--key", uri, "--cert", str(tmp / "cert.pem"), "--in", str(img), "--out-dir",
                     str(out), "--salt", SALT, "--uuid", UUID, "--pin-file", str(token.pin_file), "--no-progress"],
                    token.env)
                s["segway"].add(child.seconds)
                s["segway fsync"].add(fsync)
                s["segway rss"].add(child.max_rss_kib / 1024)
                if (out / "rootfs.hashtree").read_bytes() != hashfile.read_bytes():
                    sys.exit("segway-sign's tree differs from veritysetup's")
    print(f"after: {timing.load()}")
    m = {k: v.median for k, v in s.items()}
    print(f"image: {opts.size_mib} MiB, median of {opts.runs} runs (range), trees byte-identical in every run")
    print(f"  openssl dgst -sha256       {m['openssl']:6.2f} s ({s['openssl'].spread()})")
    print(f"  veritysetup format         {m['veritysetup']:6.2f} s ({s['veritysetup'].spread()})")
    print(f"  segway-sign verity sign    {m['segway']:6.2f} s ({s['segway'].spread()}), of which fsync "
          f"{m['segway fsync']:.2f} s ({100 * m['segway fsync'] / m['segway']:.0f}%)")
    print(f"  segway-sign peak RSS       {m['segway rss']:6.0f} MiB")
    print(timing.ratio_line("segway-sign", m["segway"], m["veritysetup"], TARGET, "veritysetup format"))
    print(timing.ratio_line("segway-sign", m["segway"], m["openssl"], None, "openssl dgst"))
    sys.exit(0 if m["segway"] / m["veritysetup"] <= TARGET else 1)


if __name__ == "__main__":
    main()
