"""Whole release: ``segway-sign release`` on the qemuarm64 plan (keys in a SoftHSM token behind
p11-kit) against the C tools doing the same signatures with file keys, and the physical limit;
same inputs, same run.

The deploy dir is what a ``SEGWAY_SIGN_MODE = "deferred"`` build of qemuarm64-secureboot leaves
(as tests/ci/test_pipeline_jobs.py makes it): the rootfs ext4 image (512 MiB by default), the
unsigned kernel FIT (kernel, device tree, initramfs; mkimage) and TF-A's FIP without certificates
(BL2, BL31, OP-TEE and its pager part, U-Boot; fiptool). segway-sign runs conf/signing/qemuarm64.yaml
as written, its key URIs pointed at the benchmark's token: the dm-verity tree appended to a copy
of the rootfs with the root hash signed, the verity env put into the FIT's initramfs and the FIT
signed, the FIP signed with TF-A's generic chain (six keys), every output checked before it is
written, the manifest of every input and output signed, the release written durably.

The C tools, with PEM keys of the same kinds, do the same signatures:
  * ``cp`` of the rootfs + ``veritysetup format IMG IMG --hash-offset`` (the appended tree) +
    ``openssl cms -sign -binary -noattr -nocerts`` over the root hash;
  * ``cp`` of the FIT + ``mkimage -F -k`` (without the verity env: putting it into the initramfs
    needs the FIT built again, which these tools leave to the build);
  * ``cert_create`` (Debian's build: TF-A's generic TBBR chain) + ``fiptool create``.
They neither check what they wrote, nor write a manifest, nor fsync. Target: segway-sign <= 1.2x
their sum. The limit printed beside them: ``openssl dgst -sha256`` over every input byte, and that
plus a durable copy (``cp`` + ``fsync``) of the rootfs and the FIT, the files a signer must write
anew. Also printed: what segway-sign's durable writes cost (it writes into a temporary directory,
flushes it and renames it; the same run with fsync and sync_file_range made no-ops by the
benchmark's probe gives the difference), the time it waits in fsync, and its peak RSS.

Where segway's time went first (cProfile of the CLI's code in the process, 512 MiB rootfs, 32 MiB
FIT, load average 8-9 on the 2 CPUs): 9.5 s, of which the verity step 5.9 s. Its appended layout
turned the two-process data level off and copied the image through Python while one process hashed
it (4.0 s in ``write`` alone on that machine, 2.6 s hashing in all); the inputs' sha256 took 1.5 s
(the rootfs must be hashed before its tree: the salt derives from it), the outputs' 0.64 s (the
appended image read once more), the FIT step 1.0 s, fsync 0.43 s. Now the image is copied inside
the kernel (copy_file_range) and the tree hashed from that copy by two processes, while a thread
sends the copy on its way to the disk (sync_file_range) and takes its sha256 for the manifest from
the written bytes; the release, not the step, flushes it before the release is named: 5.0 s in the
same profile. What is left (phase times of the CLI at load 4-5): imports 0.2-0.5 s, inputs' sha256
0.6-1.3 s, verity step 1.3-2.5 s (copy 0.25-0.6, tree 1.0-1.7, the digest's tail 0.2-0.45), FIT
step 0.4-0.6 s, FIP 0.1 s, opening the nine keys 0.05 s, the release's flush 0.05 s. In CPU time the
tree costs what veritysetup's does (user + system, 512 MiB: 0.43-0.52 s against 0.52-0.61 s); what
segway-sign does beyond the C tools is the manifest's two passes over the rootfs (its sha256 before
the tree, the copy's after: about 0.4 s of CPU each) and Python's start-up. On an idle machine the
second CPU takes the copy's digest and half the tree; on a loaded one there is no second CPU, and
the ratio follows the CPU time. Also: benchmarks run segway-sign from compiled bytecode, as
installed (``timing.installed_env``).

    .venv/bin/python -m benchmarks.release [--rootfs-mib 512] [--fit-mib 32] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from benchmarks import timing
from benchmarks.fit_sign import ITS  # the same kernel FIT source (key-name-hint HINT)
from benchmarks.p11kit import p11kit_token
from segway_sign.hsm import PinSource, devhsm, open_private_key

PLAN = timing.REPO / "conf" / "signing" / "qemuarm64.yaml"
EPOCH = "1700000000"
TARGET = 1.2
# Stand-ins for the FIP's images, at about their sizes in a qemuarm64-secureboot build.
FIP_IMAGES = {"tb-fw": 96 << 10, "soc-fw": 128 << 10, "tos-fw": 28, "tos-fw-extra1": 512 << 10, "nt-fw": 1 << 20}
# The generic chain's certificates, as cert_create and fiptool name them.
FIP_CERTS = ("tb-fw-cert", "trusted-key-cert", "soc-fw-key-cert", "soc-fw-cert", "tos-fw-key-cert", "tos-fw-cert",
             "nt-fw-key-cert", "nt-fw-cert")
# cert_create's key option for each plan key of the fip step.
FIP_KEY_OPTIONS = {"fip": "rot-key", "fip-trusted-world": "trusted-world-key",
                   "fip-non-trusted-world": "non-trusted-world-key", "fip-soc-fw": "soc-fw-key",
                   "fip-tos-fw": "tos-fw-key", "fip-nt-fw": "nt-fw-key"}


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        while size:
            n = min(size, 8 << 20)
            f.write(os.urandom(n))
            size -= n
    return path


def self_signed(key, cn: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def deploy_dir(plan: dict, root: Path, rootfs_size: int, fit_size: int) -> Path:
    """The deferred build's deploy dir, under the plan's file names."""
    deploy, work = root / "deploy", root / "work"
    deploy.mkdir()
    work.mkdir()
    steps = {s["id"]: s for s in plan["steps"]}
    random_file(deploy / steps["rootfs-verity"]["inputs"]["image"], rootfs_size)
    hint = steps["kernel-fit"]["options"]["key_name_hint"]
    random_file(work / "kernel.bin", max(fit_size - (3 << 20), 1 << 20))
    random_file(work / "board.dtb", 40_000)
    random_file(work / "initrd.bin", 3 << 20)
    (work / "fit.its").write_text(ITS.replace("HINT", hint))
    subprocess.run(["mkimage", "-f", "fit.its", str(deploy / steps["kernel-fit"]["inputs"]["fit"])], cwd=work,
                   check=True, capture_output=True, env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))
    args = ["fiptool", "create"]
    for name, size in FIP_IMAGES.items():
        args += [f"--{name}", str(random_file(work / f"{name}.bin", size))]
    subprocess.run([*args, str(deploy / steps["fip"]["inputs"]["fip"])], check=True, capture_output=True)
    for name in ("kernel.bin", "initrd.bin"):
        (work / name).unlink()
    return deploy


class Baseline:
    """The C tools with PEM keys of the same kinds as the plan's: each job timed on its own."""

    def __init__(self, plan: dict, deploy: Path, work: Path, root: Path):
        self.root = root
        self.keys = root / "pem"
        self.keys.mkdir(parents=True)
        steps = {s["id"]: s for s in plan["steps"]}
        self.rootfs = deploy / steps["rootfs-verity"]["inputs"]["image"]
        self.fit = deploy / steps["kernel-fit"]["inputs"]["fit"]
        self.hint = steps["kernel-fit"]["options"]["key_name_hint"]
        self.fip_images = {name: work / f"{name}.bin" for name in FIP_IMAGES}  # deploy_dir's
        for name in ("verity", self.hint):
            key = rsa.generate_private_key(65537, 2048)
            (self.keys / f"{name}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption()))
            (self.keys / f"{name}.crt").write_bytes(self_signed(key, name))
        for name in FIP_KEY_OPTIONS:
            key = ec.generate_private_key(ec.SECP256R1())
            (self.keys / f"{name}.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        size = self.rootfs.stat().st_size
        self.hash_offset = -(-size // 4096) * 4096
        self.salt = os.urandom(32).hex()

    def verity(self, out: Path) -> float:
        img = out / "rootfs.verity.img"
        seconds = timing.run(["cp", str(self.rootfs), str(img)]).seconds
        fmt = timing.run(["veritysetup", "format", str(img), str(img), f"--hash-offset={self.hash_offset}",
                          f"--salt={self.salt}", "--uuid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"])
        root = re.search(rb"Root hash:\s+([0-9a-f]+)", fmt.stdout)
        if root is None:
            sys.exit(f"veritysetup printed no root hash: {fmt.stdout.decode(errors='replace')}")
        (out / "rootfs.roothash").write_bytes(root.group(1))
        sign = timing.run(["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-outform", "DER",
                           "-in", str(out / "rootfs.roothash"), "-signer", str(self.keys / "verity.crt"),
                           "-inkey", str(self.keys / "verity.key"), "-out", str(out / "rootfs.roothash.p7s")])
        return seconds + fmt.seconds + sign.seconds

    def fit_sign(self, out: Path) -> float:
        fit = out / self.fit.name
        seconds = timing.run(["cp", str(self.fit), str(fit)]).seconds
        return seconds + timing.run(["mkimage", "-F", "-k", str(self.keys), str(fit)],
                                    dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)).seconds

    def fip_sign(self, out: Path) -> float:
        images = [a for name, path in self.fip_images.items() for a in (f"--{name}", str(path))]
        certs = [a for name in FIP_CERTS for a in (f"--{name}", str(out / f"{name}.crt"))]
        keys = [a for name, opt in FIP_KEY_OPTIONS.items() for a in (f"--{opt}", str(self.keys / f"{name}.pem"))]
        # Without -n, Debian's cert_create (2.8) loads every key of its chain, the unused SCP key too.
        keys += ["--scp-fw-key", str(self.keys / "fip-nt-fw.pem")]
        seconds = timing.run(["cert_create", "--key-alg", "ecdsa", "--hash-alg", "sha256", "--tfw-nvctr", "0",
                              "--ntfw-nvctr", "0", *keys, *images, *certs]).seconds
        return seconds + timing.run(["fiptool", "create", *images, *certs, str(out / "fip-qemu.bin")]).seconds


def token_plan(token, root: Path) -> tuple[Path, Path]:
    """conf/signing/qemuarm64.yaml with its keys in the benchmark's token (generated there, with
    self-signed certificates made by the token keys): (plan, certs dir)."""
    doc = yaml.safe_load(PLAN.read_text())
    certs = root / "certs"
    certs.mkdir()
    for spec in doc["keys"].values():
        label = re.search(r"object=([^;]+)", spec["uri"]).group(1)
        kind = "rsa2048" if label in ("segway-dev-verity", "segway-dev-fit") else "p256"
        uri = token.generate(kind, label)
        key = open_private_key(uri, module_path=devhsm.SOFTHSM_MODULE, pin=PinSource(file=token.pin_file))
        (certs / spec["cert"]).write_bytes(self_signed(key, label))
        spec["uri"] = uri
    plan = root / "qemuarm64.yaml"
    plan.write_text(yaml.safe_dump(doc, sort_keys=False))
    return plan, certs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs-mib", type=int, default=512)
    ap.add_argument("--fit-mib", type=int, default=32, help="size of the kernel FIT (at least 4)")
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()
    print(f"before: {timing.load()}")
    names = ("openssl", "cp", "fsync", "verity", "fit", "fip", "segway", "segway fsync", "segway rss", "no flush")
    s = {k: timing.Samples(k) for k in names}
    with tempfile.TemporaryDirectory(prefix="release-bench-", dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        plan_doc = yaml.safe_load(PLAN.read_text())
        deploy = deploy_dir(plan_doc, tmp, opts.rootfs_mib << 20, max(opts.fit_mib, 4) << 20)
        inputs = sorted(deploy.iterdir())
        c = Baseline(plan_doc, deploy, tmp / "work", tmp / "c")
        written = [c.rootfs, c.fit]  # what a signer writes anew, whole
        with p11kit_token(tmp / "token") as token:
            plan, certs = token_plan(token, tmp)
            env = dict(token.env, SOURCE_DATE_EPOCH=EPOCH)
            rel = tmp / "release"
            # Untimed: the bytecode of everything a release run imports is compiled once (installed_env).
            timing.segway_with_fsync_time(["release", "--help"], env)
            for i in range(opts.runs):
                s["openssl"].add(timing.run(["openssl", "dgst", "-sha256", *map(str, inputs)]).seconds)
                cp = fsync = 0.0
                for path in written:
                    a, b = timing.durable_copy(path, tmp / "copy")
                    cp, fsync = cp + a, fsync + b
                s["cp"].add(cp)
                s["fsync"].add(fsync)
                out = tmp / "c-out"
                out.mkdir()
                s["verity"].add(c.verity(out))
                s["fit"].add(c.fit_sign(out))
                s["fip"].add(c.fip_sign(out))
                # Each output is removed right after the run that made it (the last release is
                # checked first), so every figure starts from the same state of the page cache.
                shutil.rmtree(out)
                release = ["release", "--plan", str(plan), "--deploy-dir", str(deploy), "--out", str(rel),
                           "--certs", str(certs), "--pin-file", str(token.pin_file), "--no-progress", "--json"]
                child, fsync_sw = timing.segway_with_fsync_time(release, env)
                if json.loads(child.stdout)["status"] != "signed":
                    sys.exit(f"segway-sign release did not sign: {child.stdout.decode()}")
                s["segway"].add(child.seconds)
                s["segway fsync"].add(fsync_sw)
                s["segway rss"].add(child.max_rss_kib / 1024)
                if i == opts.runs - 1:
                    timing.run([timing.SEGWAY_SIGN, "release", "verify", "--certs", str(certs), str(rel)])
                shutil.rmtree(rel)
                # The same run with fsync and sync_file_range made no-ops: the difference is what
                # the durable writes cost (this run's release is not durable, and is removed).
                s["no flush"].add(timing.segway_with_fsync_time(release, env, flush=False)[0].seconds)
                shutil.rmtree(rel)
    print(f"after: {timing.load()}")
    m = {k: v.median for k, v in s.items()}
    tools = m["verity"] + m["fit"] + m["fip"]
    limit, durable = m["openssl"], m["openssl"] + m["cp"] + m["fsync"]
    print(f"rootfs {opts.rootfs_mib} MiB, kernel FIT {max(opts.fit_mib, 4)} MiB, FIP "
          f"{sum(FIP_IMAGES.values()) >> 10} KiB; median of {opts.runs} runs (range), seconds; "
          "the release checked with release verify")
    rows = [("openssl dgst -sha256 (every input)", "openssl"),
            ("cp + fsync (rootfs, FIT)", None),
            ("C: cp + veritysetup + openssl cms", "verity"),
            ("C: cp + mkimage -F -k", "fit"),
            ("C: cert_create + fiptool create", "fip")]
    for label, key in rows:
        if key is None:
            print(f"  {label:38} {m['cp'] + m['fsync']:6.2f} s (cp {m['cp']:.2f}, fsync {m['fsync']:.2f})")
        else:
            print(f"  {label:38} {m[key]:6.2f} s ({s[key].spread()})")
    print(f"  {'C tools, sum':38} {tools:6.2f} s")
    print(f"  {'segway-sign release':38} {m['segway']:6.2f} s ({s['segway'].spread()}), of which fsync "
          f"{m['segway fsync']:.2f} s ({100 * m['segway fsync'] / m['segway']:.0f}%)")
    print(f"  {'segway-sign, flushes made no-ops':38} {m['no flush']:6.2f} s ({s['no flush'].spread()}); "
          "benchmark only, not durable")
    print(f"  {'segway-sign peak RSS':38} {m['segway rss']:6.0f} MiB")
    print(timing.ratio_line("segway-sign", m["segway"], tools, TARGET, "the C tools' sum"))
    print(timing.ratio_line("segway-sign", m["segway"], durable, None, "(openssl dgst + cp + fsync)"))
    print(timing.ratio_line("segway-sign", m["segway"], limit, None, "openssl dgst"))
    cost = m["segway"] - m["no flush"]
    print(f"  durability: the flushes cost segway-sign {cost:.2f} s ({100 * cost / m['segway']:.0f}% of its time; "
          f"it waits {m['segway fsync']:.2f} s in fsync, the image's writeback starts while its tree is "
          "hashed); the C tools do not flush")
    return 0 if m["segway"] / tools <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
