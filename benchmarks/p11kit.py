"""A SoftHSM token behind ``p11-kit server`` for the benchmarks: segway-sign reaches it through
``p11-kit-client.so``, as a CI job reaches a remote token. The server is stopped by its process
group when the block ends."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from segway_sign.hsm import PinSource, devhsm, keygen, open_session

P11KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"


@dataclass
class Token:
    label: str
    pin_file: Path
    conf: Path
    env: dict  # what segway-sign needs to reach the token through p11-kit

    def generate(self, kind: str, label: str) -> str:
        """A key generated in the token; its PKCS#11 URI."""
        session = open_session(f"pkcs11:token={self.label}", module_path=devhsm.SOFTHSM_MODULE,
                               pin=PinSource(file=self.pin_file))
        return str(keygen.generate(session, kind, label).uri)


@contextlib.contextmanager
def p11kit_token(root: Path) -> Iterator[Token]:
    conf = devhsm.write_config(root)
    label = f"bench{secrets.token_hex(2)}"
    pin = secrets.token_hex(6)
    pin_file = root / "pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    devhsm.init_token(conf, label, secrets.token_hex(6), pin)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    sock = root / "p11kit.sock"
    server = subprocess.Popen(["p11-kit", "server", "--provider", devhsm.SOFTHSM_MODULE, "-f", "-n", str(sock),
                               f"pkcs11:token={label}"], env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not sock.exists():
            if server.poll() is not None:
                raise SystemExit("p11-kit server did not start")
            time.sleep(0.05)
        env = dict(os.environ, P11_KIT_SERVER_ADDRESS=f"unix:path={sock}", SEGWAY_PKCS11_MODULE=P11KIT_CLIENT)
        yield Token(label, pin_file, conf, env)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
