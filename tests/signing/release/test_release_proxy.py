"""The sign job through a real pkcs11-proxy (TLS-PSK) in front of SoftHSM — opt-in.

pkcs11-proxy is packaged neither in Debian nor on PyPI, so CI cannot install it: build it with
``scripts/build-pkcs11-proxy DIR`` (or take it from the signing image) and set
``SEGWAY_PKCS11_PROXY_DIR=DIR``. Without it, ``test_release_token.py`` runs the same script through
p11-kit remoting. The daemon is stopped by PID (SIGTERM, then SIGKILL: it hangs on SIGTERM while
clients are connected).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import SEGWAY_SIGN, SoftHsmToken
from tests.signing.release.release_fixtures import make_deploy, plan_doc, token_certs
from segway_sign.hsm import devhsm
from tests.signing.release.test_release_token import script_tree

PROXY_DIR = os.environ.get("SEGWAY_PKCS11_PROXY_DIR")
DAEMON = Path(PROXY_DIR or "/nonexistent") / "pkcs11-daemon"
CLIENT = Path(PROXY_DIR or "/nonexistent") / "libpkcs11-proxy.so"
REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (DAEMON.exists() and CLIENT.exists()),
                                                   reason="SEGWAY_PKCS11_PROXY_DIR with pkcs11-daemon and "
                                                          "libpkcs11-proxy.so is not set")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxy(tmp_path):
    (tmp_path / "hsm").mkdir()
    tok = SoftHsmToken(tmp_path / "hsm")
    tok.activate()
    psk = tmp_path / "psk"
    psk.write_text(f"runner-1:{secrets.token_hex(32)}\n")
    psk.chmod(0o600)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "SOFTHSM2_CONF": str(tok.conf),
           "PKCS11_DAEMON_SOCKET": f"tls://127.0.0.1:{port}", "PKCS11_PROXY_TLS_PSK_FILE": str(psk)}
    yield tok, psk, port, env
    proc = getattr(tok, "daemon", None)
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def start_daemon(tok, port, env, log: Path):
    with open(log, "ab") as out:
        tok.daemon = subprocess.Popen([str(DAEMON), devhsm.SOFTHSM_MODULE], env=env, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 30
    while not any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
                  for line in Path("/proc/net/tcp").read_text().splitlines()[1:]):
        assert tok.daemon.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def job_env(tmp_path, tok, psk, port, plan: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGWAY_", "PKCS11_", "P11_KIT", "SOFTHSM"))}
    env.update({"SEGWAY_MACHINE": plan.stem, "SEGWAY_DEPLOY_DIR": str(tmp_path / "deploy"),
                "SEGWAY_RELEASE_DIR": str(out), "SEGWAY_PKCS11_MODULE": str(CLIENT),
                "SEGWAY_PIN_FILE": str(tok.pin_file), "SEGWAY_CERTS_DIR": str(tmp_path / "certs"),
                "SEGWAY_SIGN": SEGWAY_SIGN, "PKCS11_PROXY_SOCKET": f"tls://127.0.0.1:{port}",
                "PKCS11_PROXY_TLS_PSK_FILE": str(psk), "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"})
    return env


def test_sign_job_through_pkcs11_proxy_tls_psk(proxy, tmp_path):
    tok, psk, port, daemon_env = proxy
    make_deploy(tmp_path)
    uris = token_certs(tok, tmp_path / "certs")
    plan = script_tree(tmp_path, plan_doc(uris))
    script = plan.parents[2] / "ci" / "scripts" / "sign-release.sh"
    start_daemon(tok, port, daemon_env, tmp_path / "daemon.log")
    r = subprocess.run([str(script)], env=job_env(tmp_path, tok, psk, port, plan, tmp_path / "rel"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert '"status": "signed"' in r.stdout and f"{tmp_path / 'rel'}: OK" in r.stdout
    assert json.loads((tmp_path / "rel" / "manifest.json").read_text())["keys"]["verity"]["uri"].startswith("pkcs11:")

    # Jobs one after another (the resource_group), and eight at once against the same daemon.
    def job(i):
        return subprocess.run([str(script)], env=job_env(tmp_path, tok, psk, port, plan, tmp_path / f"r{i}"),
                              capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(job, range(8)))
    failed = [(i, r.stderr.strip()[-300:]) for i, r in enumerate(results) if r.returncode]
    assert not failed, failed

    # A runner with the wrong PSK never reaches the token.
    bad = tmp_path / "bad.psk"
    bad.write_text(f"runner-1:{secrets.token_hex(32)}\n")
    bad.chmod(0o600)
    env = job_env(tmp_path, tok, psk, port, plan, tmp_path / "rbad")
    env["PKCS11_PROXY_TLS_PSK_FILE"] = str(bad)
    r = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and not (tmp_path / "rbad").exists()
