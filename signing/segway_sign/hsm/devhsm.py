"""The development HSM: a SoftHSM2 token kept in a project-local directory.

``SEGWAY_DEV_HSM_DIR`` names the directory (default ``.segway/hsm`` under the current directory).
It holds ``softhsm2.conf``, ``tokens/`` and the token's PINs (``user.pin``, ``so.pin``, mode 0600).
Used when no module is configured, so ``segway-sign`` works out of the box in a checkout.
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import time
from pathlib import Path

from ..errors import TokenError

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_LABEL = "segway-dev"


def directory() -> Path:
    return Path(os.environ.get("SEGWAY_DEV_HSM_DIR", ".segway/hsm")).absolute()


def default_module() -> str:
    """SoftHSM, pointed at the development token unless SOFTHSM2_CONF is already set."""
    if "SOFTHSM2_CONF" not in os.environ:
        conf = directory() / "softhsm2.conf"
        if not conf.exists():
            raise TokenError("no PKCS#11 module configured: give --module, set SEGWAY_PKCS11_MODULE, "
                             "or create the development HSM with 'segway-sign token init-dev'")
        os.environ["SOFTHSM2_CONF"] = str(conf)
    return SOFTHSM_MODULE


def write_config(root: Path) -> Path:
    """Create ``root/softhsm2.conf`` with its token directory; return the config path."""
    (root / "tokens").mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\n"
                    "objectstore.backend = file\n"
                    "log.level = ERROR\n"
                    "slots.removable = false\n")
    return conf


def init_token(conf: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise a free SoftHSM slot as token ``label``.

    softhsm2-util reads PINs from its terminal only; answering on a pty keeps them off argv.
    """
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execvpe("softhsm2-util", ["softhsm2-util", "--init-token", "--free", "--label", label], env)
        finally:
            os._exit(127)
    answers = [so_pin, so_pin, user_pin, user_pin]
    transcript = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            transcript += chunk
            prompts = transcript.count(b"PIN:")
            while answers and prompts > 4 - len(answers):
                os.write(fd, answers.pop(0).encode() + b"\n")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or answers:
        last = transcript.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise TokenError(f"softhsm2-util could not initialise token '{label}': {last[0]}")


def create(root: Path, label: str = DEFAULT_LABEL) -> dict[str, Path]:
    """Create the development HSM (config, token, PIN files) under ``root``; idempotent."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    conf = root / "softhsm2.conf"
    user_pin_file, so_pin_file = root / "user.pin", root / "so.pin"
    if not (conf.exists() and user_pin_file.exists() and any((root / "tokens").iterdir())):
        write_config(root)
        user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        for path, pin in ((user_pin_file, user_pin), (so_pin_file, so_pin)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pin + "\n")
        init_token(conf, label, so_pin, user_pin)
    return {"conf": conf, "pin_file": user_pin_file, "so_pin_file": so_pin_file, "module": Path(SOFTHSM_MODULE)}
