"""segway-kms in the QEMU device, on OP-TEE's PKCS#11 TA: KMS Sign against signing directly, and memory.

Boots the runtime device (scripts/segway_dev/guest.py: the signed chain, the verity root under systemd,
segway-kmsd from the image's unit) and runs one script in the guest, so every figure is the guest's:

- Per algorithm (EC P-256, RSA-2048): KMS Sign over gRPC on the admin Unix socket against signing
  directly through libckteec with python-pkcs11 on the same TA (its own token in another slot of the
  TA, since the daemon holds the first one logged in), the same digest and mechanism the daemon uses
  (CKM_ECDSA; CKM_RSA_PKCS over a DigestInfo). Timed in interleaved blocks so the emulator's noise
  hits both alike. Target: p50 <= 1.5x direct.
- Memory: VmRSS of segway-kmsd idle (started, keys made, signed with), and its peak (VmHWM) after
  `--clients` clients (threads of one process, a channel each) signed for `--seconds`.

Everything runs under TCG emulation on the host's cores: absolute times are the emulator's, the ratios
are what matters. Run: .venv/bin/python -m benchmarks.kms_guest [--count 30] [--clients 32] [--seconds 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import load, ratio_line
from scripts.segway_dev import guest, guest_system

SIGN_TARGET = 1.5  # KMS Sign p50 / direct p50
RSS_TARGET_MIB = 64.0
BENCH_TOKEN = "bench"
BENCH_PIN = "/run/bench.pin"

GUEST_SCRIPT = r'''
import hashlib, json, os, sys, threading, time
import grpc, pkcs11
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters
from segway_kms.api import kms_pb2 as pb, kms_pb2_grpc

count, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
digest = hashlib.sha256(b"segway guest benchmark").digest()
DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
pid = int(open("/run/segway-kms/pid").read()) if os.path.exists("/run/segway-kms/pid") else int(
    os.popen("systemctl show -p MainPID --value segway-kmsd.service").read())

def status(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]

def timed(func, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); func(); out.append((time.perf_counter() - t) * 1000)
    return out

stub = kms_pb2_grpc.KmsStub(grpc.insecure_channel("unix:/run/segway-kms/admin.sock"))
token = pkcs11.lib("''' + guest_system.LIBCKTEEC + r'''").get_token(token_label="''' + BENCH_TOKEN + r'''")
results = {}
with token.open(user_pin=open("''' + BENCH_PIN + r'''").read().strip(), rw=True) as s:
    params = s.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                                        local=True)
    _, ec_priv = params.generate_keypair()
    _, rsa_priv = s.generate_keypair(KeyType.RSA, 2048)
    direct = {"EC_P256": lambda: ec_priv.sign(digest, mechanism=Mechanism.ECDSA),
              "RSA_2048": lambda: rsa_priv.sign(DIGEST_INFO + digest, mechanism=Mechanism.RSA_PKCS)}
    for alg in ("EC_P256", "RSA_2048"):
        name = f"bench/{alg.lower()}"
        stub.GenerateKey(pb.GenerateKeyRequest(name=name, algorithm=getattr(pb, alg)), timeout=600)
        request = pb.SignRequest(key=pb.KeyRef(name=name), digest=digest)
        kms = lambda: stub.Sign(request, timeout=600)
        kms(); direct[alg]()  # warm both paths
        k, d = [], []
        for _ in range(max(1, count // 5)):
            k += timed(kms, 5); d += timed(direct[alg], 5)
        results[alg] = {"kms_p50": pct(k, 0.5), "kms_p99": pct(k, 0.99), "direct_p50": pct(d, 0.5),
                        "direct_p99": pct(d, 0.99), "n": len(k)}
results["rss_idle_mib"] = status("VmRSS")
errors, done = [], []
stop = time.monotonic() + seconds
def client():
    st = kms_pb2_grpc.KmsStub(grpc.insecure_channel("unix:/run/segway-kms/admin.sock"))
    req = pb.SignRequest(key=pb.KeyRef(name="bench/ec_p256"), digest=digest)
    while time.monotonic() < stop:
        try:
            st.Sign(req, timeout=600); done.append(1)
        except grpc.RpcError as exc:
            errors.append(exc.code().name)
threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
results.update(rss_peak_mib=status("VmHWM"), clients=clients, signatures=len(done), errors=len(errors))
print(json.dumps(results))
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=30, help="signatures per path and algorithm")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--work", type=Path, help="keep the device here (default: a temporary directory)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segway-kms-guest-") as tmp:
        work = args.work or Path(tmp)
        with guest.running(work, progress=lambda m: print(f"... {m}", flush=True)) as vm:
            vm.check(guest.provision_script(), timeout=600)
            vm.check("systemctl reset-failed segway-kmsd.service; systemctl restart --no-block segway-kmsd.service")
            vm.wait_kms_serving()
            vm.check(guest.provision_script(BENCH_TOKEN, 1, BENCH_PIN, "root"), timeout=600)
            vm.copy_to(GUEST_SCRIPT.encode(), "/tmp/kms_guest_bench.py")
            out = vm.check(f"python3 /tmp/kms_guest_bench.py {args.count} {args.clients} {args.seconds}", timeout=7200)
    r = json.loads(out.splitlines()[-1])
    print(f"segway-kms in the QEMU device (OP-TEE PKCS#11 TA, TCG emulation), {load()} on the host")
    for alg in ("EC_P256", "RSA_2048"):
        a = r[alg]
        print(f"{alg}: KMS Sign p50 {a['kms_p50']:.1f} ms (p99 {a['kms_p99']:.1f}), direct python-pkcs11 p50 "
              f"{a['direct_p50']:.1f} ms (p99 {a['direct_p99']:.1f}), {a['n']} each")
        print(ratio_line("KMS Sign p50", a["kms_p50"], a["direct_p50"], SIGN_TARGET, "direct"))
    verdict = "met" if r["rss_idle_mib"] < RSS_TARGET_MIB else "NOT met"
    print(f"segway-kmsd RSS idle {r['rss_idle_mib']:.1f} MiB, target < {RSS_TARGET_MIB:.0f} MiB: {verdict}; "
          f"peak under {r['clients']} clients {r['rss_peak_mib']:.1f} MiB "
          f"({r['signatures']} signatures, {r['errors']} errors in {args.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
