"""FIT signing speed: ``segway-sign fit sign`` (key in a SoftHSM token behind p11-kit) against the
physical limit and against ``mkimage -F`` with a PEM key, same files, same run.

The limit is what any signer of a FIT must do: hash the bytes (``openssl dgst -sha256``, OpenSSL's
SHA instructions) and write a new file durably (``cp`` + ``fsync``, as segway-sign flushes its
output before naming it). Target at 512 MiB: segway <= 1.5x (openssl + cp + fsync). 64 MiB is
reported only (Python's start-up is most of it). Also printed: the time segway spends in fsync, its
peak RSS at each size (it must not grow with the FIT), and segway/mkimage (mkimage does not fsync).

Where the time went before (cProfile of sign_fit + write_file at 512 MiB, file key): 4.9 s, of which
2.8 s were whole-FIT copies through pylibfdt (``libfdt.Fdt(bytearray(blob))`` and ``resize`` on the
full tree to empty the ``data`` values, then again to put them back), 0.4 s reading the file into
memory, 0.6 s writing it, 0.18 s fsync and only 0.3 s hashing; peak RSS 2 GiB. Now the ``data``
values are cut out of the tree by offset before libfdt sees it and spliced back as views of an mmap
of the input, the data is hashed from the mapping in 8 MiB pieces (pages dropped behind) and copied
to the output with copy_file_range: what is left is hashing, the copy and the fsync.

    .venv/bin/python -m benchmarks.fit_sign [--sizes 64,512] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from benchmarks import timing
from benchmarks.p11kit import p11kit_token

EPOCH = "1700000000"
TARGET = 1.5
# key-name-hint "HINT" is replaced by the signing key's name (benchmarks/release.py shares it).
ITS = """/dts-v1/;
/ {
    description = "benchmark kernel FIT";
    #address-cells = <1>;
    images {
        kernel-1 { description = "kernel"; data = /incbin/("kernel.bin"); type = "kernel"; arch = "arm64";
                   os = "linux"; compression = "none"; load = <0x40400000>; entry = <0x40400000>;
                   hash-1 { algo = "sha256"; }; };
        fdt-1 { description = "fdt"; data = /incbin/("board.dtb"); type = "flat_dt"; arch = "arm64";
                compression = "none"; hash-1 { algo = "sha256"; }; };
        ramdisk-1 { description = "initramfs"; data = /incbin/("initrd.bin"); type = "ramdisk"; arch = "arm64";
                    os = "linux"; compression = "none"; hash-1 { algo = "sha256"; }; };
    };
    configurations {
        default = "conf-1";
        conf-1 { description = "boot"; kernel = "kernel-1"; fdt = "fdt-1"; ramdisk = "ramdisk-1";
            signature-1 { algo = "sha256,rsa2048"; key-name-hint = "HINT"; sign-images = "kernel", "fdt", "ramdisk"; };
        };
    };
};
"""


def unsigned_fit(workdir: Path, kernel_size: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "kernel.bin", "wb") as f:
        for _ in range(kernel_size >> 23):
            f.write(os.urandom(8 << 20))
    (workdir / "board.dtb").write_bytes(os.urandom(40_000))
    (workdir / "initrd.bin").write_bytes(os.urandom(3_000_000))
    (workdir / "fit.its").write_text(ITS.replace("HINT", "dev"))
    subprocess.run(["mkimage", "-f", "fit.its", "unsigned.itb"], cwd=workdir, check=True, capture_output=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))
    for name in ("kernel.bin", "board.dtb", "initrd.bin"):
        (workdir / name).unlink()
    return workdir / "unsigned.itb"


def pem_keys(keydir: Path) -> None:
    """dev.key + dev.crt for mkimage -k."""
    keydir.mkdir()
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (keydir / "dev.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    (keydir / "dev.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,512", help="FIT sizes in MiB (comma-separated)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"before: {timing.load()}")
    met = True
    with tempfile.TemporaryDirectory(prefix="segway-bench-", dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        pem_keys(tmp / "keys")
        with p11kit_token(tmp / "token") as token:
            uri = token.generate("rsa2048", "dev")
            pin = ["--pin-file", str(token.pin_file)]
            env = dict(token.env, SOURCE_DATE_EPOCH=EPOCH)
            ctl = tmp / "ctl.dtb"
            subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(ctl), "-"], check=True,
                           input=b'/dts-v1/; / { model = "t"; };')
            timing.run([timing.SEGWAY_SIGN, "fit", "add-pubkey", "--key", uri, "--dtb", str(ctl), "--out",
                        str(ctl), "--force", "--key-name-hint", "dev", *pin], env)
            rows = []
            for size in sizes:
                unsigned = unsigned_fit(tmp / f"fit{size}", size << 20)
                s = {k: timing.Samples(k) for k in ("openssl", "cp", "fsync", "mkimage", "segway", "segway fsync",
                                                      "segway rss")}
                out, work = tmp / "sw.itb", tmp / "mk.itb"
                bytes_to_token = None
                for _ in range(args.runs):
                    s["openssl"].add(timing.openssl_dgst(unsigned))
                    cp, fsync = timing.durable_copy(unsigned, tmp / "copy.itb")
                    s["cp"].add(cp)
                    s["fsync"].add(fsync)
                    shutil.copyfile(unsigned, work)
                    s["mkimage"].add(timing.run(["mkimage", "-F", "-k", str(tmp / "keys"), str(work)],
                                                dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)).seconds)
                    child, fsync_sw = timing.segway_with_fsync_time(
                        ["fit", "sign", "--key", uri, "--in", str(unsigned), "--out", str(out), "--force", "--json",
                         *pin], env)
                    s["segway"].add(child.seconds)
                    s["segway fsync"].add(fsync_sw)
                    s["segway rss"].add(child.max_rss_kib / 1024)
                    bytes_to_token = json.loads(child.stdout)["bytes_sent_to_token"]
                timing.run([timing.SEGWAY_SIGN, "fit", "verify", "--dtb", str(ctl), "--in", str(out)])
                work.unlink()
                out.unlink()
                unsigned.unlink()
                rows.append((size, {k: v.median for k, v in s.items()}, bytes_to_token))
    print(f"after: {timing.load()}")
    print(f"median of {args.runs} runs, seconds (segway-sign: CLI through p11-kit, output verified with fit verify)")
    print(f"{'size':>7} {'openssl':>8} {'cp':>6} {'fsync':>6} {'limit':>7} {'mkimage':>8} {'segway':>7} "
          f"{'(fsync)':>8} {'peak RSS':>9} {'to token':>9}")
    for size, m, sent in rows:
        limit = m["openssl"] + m["cp"] + m["fsync"]
        print(f"{size:>5}Mi {m['openssl']:>8.2f} {m['cp']:>6.2f} {m['fsync']:>6.2f} {limit:>7.2f} {m['mkimage']:>8.2f} "
              f"{m['segway']:>7.2f} {m['segway fsync']:>8.2f} {m['segway rss']:>7.0f}Mi {sent:>8}B")
    for size, m, _ in rows:
        limit = m["openssl"] + m["cp"] + m["fsync"]
        target = TARGET if size >= 512 else None
        print(f"{size} MiB:")
        print(timing.ratio_line("segway", m["segway"], limit, target, "(openssl dgst + cp + fsync)"))
        met &= target is None or m["segway"] / limit <= target
        print(timing.ratio_line("segway", m["segway"], m["mkimage"], None, "mkimage -F"))
        print(timing.ratio_line("segway", m["segway"], m["openssl"], None, "openssl dgst"))
        print(f"  durability: segway spends {m['segway fsync']:.2f} s in fsync "
              f"({100 * m['segway fsync'] / m['segway']:.0f}% of its time)")
    if len(rows) > 1:
        lo, hi = rows[0][1]["segway rss"], rows[-1][1]["segway rss"]
        flat = hi <= lo * 1.1 + 4
        met &= flat
        print(f"peak RSS {lo:.0f} MiB at {rows[0][0]} MiB, {hi:.0f} MiB at {rows[-1][0]} MiB: "
              f"{'does not grow with the FIT' if flat else 'GROWS with the FIT'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
