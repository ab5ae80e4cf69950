"""One client of the segway-kms benchmark in a process of its own (benchmarks/kms.py starts 32 of them).

    python -m benchmarks.kms_client <key name> <socket> [<socket> ...]

Opens a channel of its own to each server's Unix socket and says "ready"; then, for every line
"<server index> <start> <seconds>" on stdin (CLOCK_MONOTONIC, which all processes share), signs from <start>
for <seconds> and answers with one JSON line: the latency of every call, how many finished inside the
window, the errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import grpc

from segway_kms.api import kms_pb2 as pb
from segway_kms.api import kms_pb2_grpc


def main() -> None:
    name, sockets = sys.argv[1], sys.argv[2:]
    stubs = [kms_pb2_grpc.KmsStub(grpc.insecure_channel(f"unix:{s}")) for s in sockets]

    def sign(stub) -> None:
        digest = hashlib.sha256(os.urandom(16)).digest()
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name=name), digest=digest), timeout=60)

    for stub in stubs:
        for _ in range(5):  # connect and warm up outside the windows
            sign(stub)
    print("ready", flush=True)
    for line in sys.stdin:
        index, start, seconds = line.split()
        stub, start, end = stubs[int(index)], float(start), float(start) + float(seconds)
        while (now := time.monotonic()) < start:
            time.sleep(min(start - now, 0.01))
        latencies, done, errors, first_error = [], 0, 0, ""
        while (begin := time.monotonic()) < end:
            try:
                sign(stub)
            except grpc.RpcError as exc:
                errors += 1
                first_error = first_error or f"{exc.code().name}: {exc.details()}"
                continue
            finish = time.monotonic()
            latencies.append(finish - begin)
            done += finish <= end
        print(json.dumps({"latencies": latencies, "done": done, "errors": errors, "first_error": first_error}),
              flush=True)


if __name__ == "__main__":
    main()
