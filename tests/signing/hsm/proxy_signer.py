"""A long-lived signing client for the pkcs11-proxy tests: one process, several signatures.

    proxy_signer.py --key URI --pin-file FILE --rounds N --gate DIR [--skip-login-probe]

The module comes from SEGWAY_PKCS11_MODULE (and PKCS11_PROXY_SOCKET), as for the CLI. After each
signature it prints one JSON line and, before the next round, waits until ``DIR/go-<round>``
exists: the test changes the world in between (restarts the daemon, ends another client).
``--skip-login-probe`` makes the session issue C_Login even when another client of the daemon
already logged in, so the UserAlreadyLoggedIn path runs against the real daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from segway_sign.errors import SegwayError
from segway_sign.hsm import PinSource, open_private_key
from segway_sign.hsm.session import TokenSession


def sign(key, message: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--pin-file", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gate", type=Path, required=True)
    ap.add_argument("--skip-login-probe", action="store_true")
    ap.add_argument("--gate-timeout", type=float, default=300)
    args = ap.parse_args()
    if args.skip_login_probe:
        TokenSession._logged_in = staticmethod(lambda session: False)
    try:
        key = open_private_key(args.key, pin=PinSource(file=args.pin_file))
        for n in range(1, args.rounds + 1):
            if n > 1:
                go = args.gate / f"go-{n}"
                deadline = time.monotonic() + args.gate_timeout
                while not go.exists():
                    if time.monotonic() > deadline:
                        print(f"proxy_signer: error: {go} did not appear", file=sys.stderr)
                        return 3
                    time.sleep(0.05)
            message = f"round {n}".encode()
            signature = sign(key, message)  # verified with the public key inside sign()
            print(json.dumps({"round": n, "message": message.hex(), "signature": signature.hex()}), flush=True)
    except SegwayError as err:
        print(f"segway-sign: error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
