"""Real PKCS#11 back-ends for tests: a SoftHSM2 token per test, optionally behind a p11-kit server.

Every process a test starts is stopped by PID in the fixture's teardown.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from segway_sign.hsm import PinSource, devhsm, keygen, module, open_private_key, open_session

P11KIT_CLIENT = next((p for p in ("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
                                  "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so")
                      if os.path.exists(p)), "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
REPO = Path(__file__).resolve().parents[1]
SEGWAY_SIGN = str(REPO / ".venv" / "bin" / "segway-sign")


_active: "SoftHsmToken | None" = None


def forget_active_token() -> None:
    """After module.reset() elsewhere, the next activate() must reset and set the environment again."""
    global _active
    _active = None


class SoftHsmToken:
    """A fresh SoftHSM2 token in ``root`` (direct transport)."""

    transport = "direct"

    def __init__(self, root: Path, label: str | None = None):
        self.root = root
        self.token_label = label or f"t{secrets.token_hex(3)}"
        self.conf = devhsm.write_config(root)
        self.pin = secrets.token_hex(6)
        self.pin_file = root / "user.pin"
        fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.pin + "\n")
        devhsm.init_token(self.conf, self.token_label, secrets.token_hex(6), self.pin)
        self.module = devhsm.SOFTHSM_MODULE

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    @property
    def token_uri(self) -> str:
        return f"pkcs11:token={self.token_label}"

    def activate(self) -> None:
        """Point this process's PKCS#11 layer at this token.

        Only a switch between tokens resets (and unloads) the modules: keys opened earlier from the
        same token keep working."""
        global _active
        if _active is self and all(os.environ.get(k) == v for k, v in self.env.items()):
            return
        module.reset()
        os.environ.update(self.env)
        _active = self

    def generate(self, kind: str, label: str) -> str:
        """Create a key pair inside the token; return the private key's URI."""
        self.activate()
        session = open_session(self.token_uri, module_path=self.module, pin=PinSource(file=self.pin_file))
        key = keygen.generate(session, kind, label)
        return str(key.uri)

    def open_key(self, uri: str):
        self.activate()
        return open_private_key(uri, module_path=self.module, pin=PinSource(file=self.pin_file))

    def run_env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. the segway-sign CLI) using this token."""
        env = dict(os.environ)
        env.update(self.env)
        env["SEGWAY_PKCS11_MODULE"] = self.module
        return env


class P11KitToken(SoftHsmToken):
    """The same token reached through ``p11-kit server`` + ``p11-kit-client.so`` (remoting)."""

    transport = "p11kit"

    def __init__(self, root: Path, label: str | None = None):
        super().__init__(root, label)
        self.socket = root / "p11kit.sock"
        env = dict(os.environ, SOFTHSM2_CONF=str(self.conf))
        self.server = subprocess.Popen(
            ["p11-kit", "server", "--provider", devhsm.SOFTHSM_MODULE, "-f", "-n", str(self.socket),
             f"pkcs11:token={self.token_label}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                err = self.server.stderr.read().decode(errors="replace") if self.server.stderr else ""
                self.stop()
                raise RuntimeError(f"p11-kit server did not start: {err}")
            time.sleep(0.05)
        self.module = P11KIT_CLIENT

    @property
    def env(self) -> dict[str, str]:
        # SOFTHSM2_CONF too, so a test's own softhsm2-util calls find the token; the client ignores it.
        return {"SOFTHSM2_CONF": str(self.conf), "P11_KIT_SERVER_ADDRESS": f"unix:path={self.socket}"}

    def stop(self) -> None:
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


def open_token_key(tok: SoftHsmToken, uri: str):
    """The token key as a ``cryptography`` private key (signing happens in the token)."""
    return tok.open_key(uri)


def run_cli(args: list[str], tok: SoftHsmToken | None = None, env: dict | None = None,
            input: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the segway-sign CLI as a user would; text output."""
    full_env = tok.run_env() if tok else dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([SEGWAY_SIGN, *args], env=full_env, input=input, capture_output=True,
                          timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)


def ok(res: subprocess.CompletedProcess) -> str:
    """A command that must have succeeded; its stdout."""
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def one_line_error(res: subprocess.CompletedProcess, code: int = 1, match: str = "") -> str:
    """A command that must have failed cleanly: exit ``code``, no traceback, one line naming the
    problem (click's own usage errors excepted); returns stderr."""
    err = res.stderr.decode()
    assert res.returncode == code, (res.returncode, err)
    assert "Traceback" not in err and match in err, err
    assert (len(err.strip().splitlines()) == 1 and err.startswith("segway-sign: error: ")) \
        or err.startswith("Usage:"), err
    return err
