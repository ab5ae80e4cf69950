"""segway-sign through a real pkcs11-proxy (pkcs11-daemon + libpkcs11-proxy.so) in front of SoftHSM.

Opt-in: pkcs11-proxy is packaged neither in Debian nor on PyPI, so CI cannot install it. Build it
with ``scripts/build-pkcs11-proxy DIR`` and run with ``SEGWAY_PKCS11_PROXY_DIR=DIR``.

What the proxy changes compared with a direct module (see the project's PKCS#11 spec): every
client of one daemon is one PKCS#11 application, so clients share one login; a daemon restart
loses every session; the daemon may hang on SIGTERM while clients are connected. The daemon here
runs OpenSC's pkcs11-spy in front of SoftHSM where a test counts C_Login/C_Logout calls.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fit_fixtures import EPOCH, make_unsigned_fit
from tests.helpers import REPO, SEGWAY_SIGN, SoftHsmToken
from segway_sign.hsm import devhsm

PROXY_DIR = os.environ.get("SEGWAY_PKCS11_PROXY_DIR")
DAEMON = Path(PROXY_DIR or "/nonexistent") / "pkcs11-daemon"
CLIENT = Path(PROXY_DIR or "/nonexistent") / "libpkcs11-proxy.so"
SPY = next((p for p in ("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so", "/usr/lib/aarch64-linux-gnu/pkcs11-spy.so")
            if os.path.exists(p)), None)
SIGNER = Path(__file__).with_name("proxy_signer.py")


def _skip_reason() -> str | None:
    if not PROXY_DIR:
        return ("SEGWAY_PKCS11_PROXY_DIR is not set (build pkcs11-proxy with scripts/build-pkcs11-proxy DIR "
                "and point the variable at DIR)")
    missing = [str(p) for p in (DAEMON, CLIENT) if not p.exists()]
    if missing:
        return f"SEGWAY_PKCS11_PROXY_DIR={PROXY_DIR} lacks {', '.join(missing)}"
    if SPY is None:
        return "OpenSC's pkcs11-spy.so is not installed (Debian package opensc)"
    return None


pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""), pytest.mark.slow]

FIT_KEY_LABEL = "proxy-fit"
PLAN = """\
name: proxy-test
token: "pkcs11:token={token}"
root:
  label: proxy-root-ca
  key: p256
  subject: {{CN: "pkcs11-proxy test root CA", O: "segway"}}
  validity_days: 30
keys:
  - label: {fit}
    purpose: fit
    key: rsa2048
    key_name_hint: dev
    subject: {{CN: "pkcs11-proxy test FIT signing", O: "segway"}}
    validity_days: 30
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_psk(path: Path, identity: str = "ci-runner") -> Path:
    """GnuTLS psktool format, ``identity:hexkey``, mode 0600 from creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{identity}:{secrets.token_hex(32)}\n")
    return path


class ProxyDaemon:
    """``pkcs11-daemon`` serving one SoftHSM token directory on a loopback port; stopped by PID."""

    def __init__(self, tok: SoftHsmToken, root: Path, *, scheme: str = "tcp", psk: Path | None = None,
                 spy: bool = False, port: int | None = None):
        self.tok, self.root, self.scheme, self.psk, self.spy = tok, root, scheme, psk, spy
        self.port = port or free_port()
        self.spy_log = root / f"spy-{self.port}-{secrets.token_hex(3)}.log"
        self.log = root / f"daemon-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> "ProxyDaemon":
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SOFTHSM2_CONF": str(self.tok.conf),
               "PKCS11_DAEMON_SOCKET": self.address}
        target = devhsm.SOFTHSM_MODULE
        if self.spy:
            env.update(PKCS11SPY=devhsm.SOFTHSM_MODULE, PKCS11SPY_OUTPUT=str(self.spy_log))
            target = SPY
        if self.psk:
            env["PKCS11_PROXY_TLS_PSK_FILE"] = str(self.psk)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(DAEMON), target], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pkcs11-daemon did not listen on {self.address}: {self.log.read_text()}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        """Look for the LISTEN socket in /proc rather than connecting (a probe would be a client)."""
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = [line.split() for line in Path(table).read_text().splitlines()[1:]]
            except OSError:
                continue
            # columns: sl local_address rem_address st ...; st 0A is LISTEN
            if any(r[1].endswith(f":{self.port:04X}") and r[3] == "0A" for r in rows):
                return True
        return False

    def stop(self, term_timeout: float = 5) -> str:
        """SIGTERM, then SIGKILL: the daemon deadlocks on SIGTERM while clients are connected."""
        if self.proc is None or self.proc.poll() is not None:
            return "exited"
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(term_timeout)
            return "sigterm"
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            return "sigkill"

    def calls(self) -> list[tuple[str, str | None]]:
        """(function, CKR_ result) for every call the spy logged."""
        return spy_calls(self.spy_log)

    def client_env(self, psk: Path | None = None) -> dict[str, str]:
        env = dict(os.environ, SEGWAY_PKCS11_MODULE=str(CLIENT), PKCS11_PROXY_SOCKET=self.address,
                   SOURCE_DATE_EPOCH=EPOCH)
        for var in ("SOFTHSM2_CONF", "PKCS11_PROXY_TLS_PSK_FILE"):
            env.pop(var, None)  # the client must reach the token through the daemon only
        if psk or self.psk:
            env["PKCS11_PROXY_TLS_PSK_FILE"] = str(psk or self.psk)
        return env


def spy_calls(log: Path) -> list[tuple[str, str | None]]:
    """Results are paired with the latest open call: exact only while calls do not overlap."""
    calls: list[list] = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        m = re.match(r"^\d+: (C_\w+)$", line)
        if m:
            calls.append([m.group(1), None])
        elif line.startswith("Returned:") and calls and calls[-1][1] is None:
            calls[-1][1] = line.split()[-1]
    return [tuple(c) for c in calls]


def cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SEGWAY_SIGN, *args], env=env, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    """segway-sign's own report is one line; libpkcs11-proxy itself may print WARNING lines first."""
    err = res.stderr.decode(errors="replace")
    assert res.returncode != 0, err
    assert "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("segway-sign:")]
    assert len(ours) == 1 and ours[0].startswith("segway-sign: error: "), err
    foreign = [line for line in err.splitlines() if line.strip() and not line.startswith("segway-sign:")]
    assert all(line.startswith("WARNING:") for line in foreign), err  # the proxy library's own stderr
    for w in words:
        assert w in ours[0], err
    return ours[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One SoftHSM token whose keys were created by ``segway-sign pki init`` through the proxy."""
    root = tmp_path_factory.mktemp("proxy")
    (root / "hsm").mkdir()
    tok = SoftHsmToken(root / "hsm")
    plan = root / "plan.yaml"
    plan.write_text(PLAN.format(token=tok.token_label, fit=FIT_KEY_LABEL))
    daemon = ProxyDaemon(tok, root, spy=True).start()
    try:
        env = daemon.client_env()
        env.pop("SOURCE_DATE_EPOCH")  # certificates valid from now on
        res = cli(["pki", "init", str(plan), "--out", str(root / "pki"), "--pin-file", str(tok.pin_file), "--json"],
                  env)
        assert res.returncode == 0, res.stderr.decode()
        record = json.loads(res.stdout)
    finally:
        daemon.stop()
    calls = daemon.calls()
    # Key generation went through the daemon (not some local module), and nothing logged out.
    assert [c for c in calls if c[0] == "C_GenerateKeyPair"] == [("C_GenerateKeyPair", "CKR_OK")] * 2
    assert not [c for c in calls if c[0] == "C_Logout"]
    unsigned = make_unsigned_fit(root / "fit")
    return {"tok": tok, "root": root, "out": root / "pki", "record": record, "unsigned": unsigned,
            "key": f"pkcs11:token={tok.token_label};object={FIT_KEY_LABEL}",
            "dtb": root / "pki" / "u-boot" / "dev.dtb",
            "pub": root / "pki" / "keys" / f"{FIT_KEY_LABEL}.pub.pem"}


@pytest.fixture
def daemon_factory(pki):
    started: list[ProxyDaemon] = []

    def make(**kw) -> ProxyDaemon:
        d = ProxyDaemon(pki["tok"], pki["root"], **kw).start()
        started.append(d)
        return d
    yield make
    for d in started:
        d.stop()


def sign_fit(pki, env: dict, out: Path, *extra: str, key: str | None = None) -> subprocess.CompletedProcess:
    return cli(["fit", "sign", "--key", key or pki["key"], "--in", str(pki["unsigned"]), "--out", str(out),
                "--pin-file", str(pki["tok"].pin_file), *extra], env)


def assert_fit_verifies(pki, signed: Path) -> None:
    """segway-sign's U-Boot-rules check, then openssl on the signed configuration digest."""
    res = cli(["fit", "verify", "--dtb", str(pki["dtb"]), "--in", str(signed)], dict(os.environ))
    assert res.returncode == 0 and b"sha256,rsa2048:dev+ verified" in res.stdout, res.stdout + res.stderr
    from segway_sign.formats.fit.tree import open_fdt
    from segway_sign.formats.fit.verify import config_digest
    blob = signed.read_bytes()
    node = "/configurations/conf-1/signature-1"
    digest = signed.with_suffix(".digest")
    digest.write_bytes(config_digest(open_fdt(blob), blob, "conf-1", node, "sha256"))
    sig = signed.with_suffix(".sig")
    fdt = open_fdt(blob)
    sig.write_bytes(bytes(fdt.getprop(fdt.path_offset(node), "value")))
    res = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pki["pub"]), "-in", str(digest),
                          "-sigfile", str(sig), "-pkeyopt", "digest:sha256"], capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_pki_init_made_token_keys(pki):
    """The ceremony ran through the proxy: keys in the token, never extractable, certificates valid."""
    for key in pki["record"]["keys"]:
        assert key["attributes"] | {"extractable": True} == {
            "sensitive": True, "extractable": True, "always_sensitive": True, "never_extractable": True,
            "local": True, "token": True, "private": True}, key
        assert key["attributes"]["extractable"] is False
    certs = pki["out"] / "certs"
    res = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "proxy-root-ca.pem"),
                          str(certs / f"{FIT_KEY_LABEL}.pem")], capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # The objects are in the SoftHSM token itself (read here without the proxy).
    env = dict(os.environ, SOFTHSM2_CONF=str(pki["tok"].conf), SEGWAY_PKCS11_MODULE=devhsm.SOFTHSM_MODULE)
    res = cli(["token", "info", "--json", "--pin-file", str(pki["tok"].pin_file)], env)
    assert res.returncode == 0, res.stderr.decode()
    token = next(t for t in json.loads(res.stdout)["tokens"] if t["label"] == pki["tok"].token_label)
    assert {(o["label"], o["class"]) for o in token["objects"]} >= {
        (FIT_KEY_LABEL, "private"), (FIT_KEY_LABEL, "public"), ("proxy-root-ca", "private")}


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_token_info_sign_and_verify(pki, daemon_factory, tmp_path, scheme):
    psk = write_psk(tmp_path / "proxy.psk") if scheme == "tls" else None
    daemon = daemon_factory(scheme=scheme, psk=psk)
    env = daemon.client_env()
    res = cli(["token", "info", "--json", "--pin-file", str(pki["tok"].pin_file)], env)
    assert res.returncode == 0, res.stderr.decode()
    info = json.loads(res.stdout)
    assert info["module"] == str(CLIENT)
    token = next(t for t in info["tokens"] if t["label"] == pki["tok"].token_label)
    # The proxy forwards only mechanisms it can marshal; the ones segway-sign uses are among them.
    assert {"RSA_PKCS", "RSA_PKCS_PSS", "ECDSA"} <= set(token["mechanisms"])
    assert (FIT_KEY_LABEL, "private") in {(o["label"], o["class"]) for o in token["objects"]}
    out = tmp_path / "signed.itb"
    res = sign_fit(pki, env, out, "--json")
    assert res.returncode == 0, res.stderr.decode()
    assert json.loads(res.stdout)["bytes_sent_to_token"] == 51
    assert_fit_verifies(pki, out)
    assert pki["unsigned"].read_bytes() != out.read_bytes()


def test_tls_refuses_wrong_psk_and_plaintext(pki, daemon_factory, tmp_path):
    daemon = daemon_factory(scheme="tls", psk=write_psk(tmp_path / "daemon.psk"))
    out = tmp_path / "x.itb"
    wrong = write_psk(tmp_path / "wrong.psk")
    one_line_error(sign_fit(pki, daemon.client_env(psk=wrong), out), "PKCS11_PROXY_SOCKET=tls://127.0.0.1")
    plain = daemon.client_env()
    plain["PKCS11_PROXY_SOCKET"] = f"tcp://127.0.0.1:{daemon.port}"
    del plain["PKCS11_PROXY_TLS_PSK_FILE"]
    one_line_error(sign_fit(pki, plain, out))
    assert not out.exists() and not list(tmp_path.glob(".x.itb*"))
    # The daemon survived both and still serves the right key.
    assert sign_fit(pki, daemon.client_env(), out).returncode == 0


def test_daemon_down_is_a_clean_error(pki, tmp_path):
    env = dict(os.environ, SEGWAY_PKCS11_MODULE=str(CLIENT), PKCS11_PROXY_SOCKET=f"tcp://127.0.0.1:{free_port()}")
    out = tmp_path / "x.itb"
    one_line_error(sign_fit(pki, env, out), "reachable")
    env.pop("PKCS11_PROXY_SOCKET")
    one_line_error(sign_fit(pki, env, out), "PKCS11_PROXY_SOCKET is not set")
    assert not out.exists()


def test_wrong_pin_is_one_login_and_a_clean_error(pki, daemon_factory, tmp_path):
    daemon = daemon_factory(spy=True)
    bad = tmp_path / "bad.pin"
    bad.write_text("99999999\n")
    bad.chmod(0o600)
    out = tmp_path / "x.itb"
    res = cli(["fit", "sign", "--key", pki["key"], "--in", str(pki["unsigned"]), "--out", str(out),
               "--pin-file", str(bad)], daemon.client_env())
    err = one_line_error(res, "refused the PIN", "not retried")
    assert "99999999" not in res.stderr.decode() + res.stdout.decode() and not out.exists()
    assert [c for c in daemon.calls() if c[0] == "C_Login"] == [("C_Login", "CKR_PIN_INCORRECT")], err
    assert sign_fit(pki, daemon.client_env(), out).returncode == 0  # not locked


@pytest.mark.parametrize("n", [2, 8])
def test_concurrent_signing_processes_share_the_login(pki, daemon_factory, tmp_path, n):
    daemon = daemon_factory(spy=True)
    env = daemon.client_env()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: sign_fit(pki, env, tmp_path / f"s{i}.itb"), range(n)))
    assert [r.returncode for r in results] == [0] * n, [r.stderr.decode() for r in results]
    for i in range(n):
        assert_fit_verifies(pki, tmp_path / f"s{i}.itb")
    # Concurrent calls interleave in the spy log, so count calls instead of pairing them with results.
    names = [f for f, _ in daemon.calls()]
    assert names.count("C_Login") >= 1 and names.count("C_Sign") >= n and "C_Logout" not in names
    # Only C_Login can return CKR_PIN_INCORRECT: nobody was refused.
    assert "CKR_PIN_INCORRECT" not in daemon.spy_log.read_text(errors="replace")


def start_signer(pki, env: dict, gate: Path, *extra: str) -> subprocess.Popen:
    gate.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(SIGNER), "--key", pki["key"], "--pin-file", str(pki["tok"].pin_file),
                             "--gate", str(gate), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=REPO)


def next_signature(proc: subprocess.Popen, pki) -> dict:
    line = proc.stdout.readline()
    if not line:
        proc.wait(60)
        pytest.fail(f"signer exited {proc.returncode}: {proc.stderr.read().decode()}")
    result = json.loads(line)
    public = serialization.load_pem_public_key(pki["pub"].read_bytes())
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(bytes.fromhex(result["signature"]), bytes.fromhex(result["message"]), padding.PKCS1v15(),
                  hashes.SHA256())
    return result


def finish(proc: subprocess.Popen) -> str:
    """Wait for a signer; it must succeed without printing a traceback. Returns its stderr."""
    try:
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode(errors="replace")
    assert rc == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return err


def test_other_clients_exit_does_not_log_this_one_out(pki, daemon_factory, tmp_path):
    """Client B logs in while A holds the shared login, A exits, B keeps signing."""
    daemon = daemon_factory(spy=True)
    env = daemon.client_env()
    a = start_signer(pki, env, tmp_path / "a")
    b = None
    try:
        next_signature(a, pki)
        # B issues its own C_Login (no probe): the daemon answers CKR_USER_ALREADY_LOGGED_IN.
        b = start_signer(pki, env, tmp_path / "b", "--skip-login-probe", "--rounds", "3")
        next_signature(b, pki)
        (tmp_path / "a" / "go-2").touch()
        next_signature(a, pki)
        finish(a)  # A's connection closes: the daemon closes A's sessions, but B's session keeps the login
        (tmp_path / "b" / "go-2").touch()
        next_signature(b, pki)
        # A later CLI job through the same daemon is fine too, and B still signs after it is gone.
        assert sign_fit(pki, env, tmp_path / "later.itb").returncode == 0
        (tmp_path / "b" / "go-3").touch()
        next_signature(b, pki)
        finish(b)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    calls = daemon.calls()
    assert [r for f, r in calls if f == "C_Login"][:2] == ["CKR_OK", "CKR_USER_ALREADY_LOGGED_IN"], calls
    assert not [c for c in calls if c[0] == "C_Logout"]


def test_pin_is_not_checked_while_another_client_holds_the_login(pki, daemon_factory, tmp_path):
    """A limit of the proxy, kept visible: the login belongs to the daemon, not to the job.

    While any client is logged in, a job with a wrong PIN (or none) signs: its probe finds the key
    visible, and a C_Login would only return CKR_USER_ALREADY_LOGGED_IN. Access control behind a
    shared daemon is the TLS-PSK and the network, not the PIN.
    """
    daemon = daemon_factory(spy=True)
    env = daemon.client_env()
    holder = start_signer(pki, env, tmp_path / "gate")
    try:
        next_signature(holder, pki)
        bad = tmp_path / "bad.pin"
        bad.write_text("99999999\n")
        bad.chmod(0o600)
        res = cli(["fit", "sign", "--key", pki["key"], "--in", str(pki["unsigned"]), "--out",
                   str(tmp_path / "wrong-pin.itb"), "--pin-file", str(bad)], env)
        assert res.returncode == 0, res.stderr.decode()
        assert_fit_verifies(pki, tmp_path / "wrong-pin.itb")
        (tmp_path / "gate" / "go-2").touch()
        next_signature(holder, pki)
        finish(holder)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert [f for f, _ in daemon.calls()].count("C_Login") == 1  # the holder's; the PIN never reached the token


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_daemon_restart_between_two_signatures(pki, daemon_factory, tmp_path, scheme):
    """The first call after a restart fails on the dead connection; one retry reopens and logs in."""
    psk = write_psk(tmp_path / "proxy.psk") if scheme == "tls" else None
    first = daemon_factory(scheme=scheme, psk=psk, spy=True)
    signer = start_signer(pki, first.client_env(), tmp_path / "gate")
    try:
        next_signature(signer, pki)
        assert first.stop() in ("sigterm", "sigkill")
        second = daemon_factory(scheme=scheme, psk=psk, spy=True, port=first.port)
        (tmp_path / "gate" / "go-2").touch()
        next_signature(signer, pki)
        finish(signer)
    finally:
        if signer.poll() is None:
            signer.kill()
            signer.wait()
    again = second.calls()
    # A fresh session and one login on the new daemon, then the signature.
    assert ("C_OpenSession", "CKR_OK") in again and [c for c in again if c[0] == "C_Login"] == [("C_Login", "CKR_OK")]
    assert ("C_Sign", "CKR_OK") in again and not [c for c in again if c[0] == "C_Logout"]


def test_daemon_gone_mid_run_is_a_clean_error(pki, daemon_factory, tmp_path):
    """The daemon dies between two signatures and does not come back: one line, no traceback."""
    daemon = daemon_factory()
    signer = start_signer(pki, daemon.client_env(), tmp_path / "gate")
    try:
        next_signature(signer, pki)
        assert daemon.stop() in ("sigterm", "sigkill")
        (tmp_path / "gate" / "go-2").touch()
        assert signer.wait(120) == 1
    finally:
        if signer.poll() is None:
            signer.kill()
            signer.wait()
    err = signer.stderr.read().decode(errors="replace")
    assert not signer.stdout.read()
    ours = [line for line in err.splitlines() if line.startswith("segway-sign:")]
    assert len(ours) == 1 and "token '" in ours[0] and "DeviceError" in ours[0], err
    assert "Traceback" not in err and "Exception ignored" not in err, err
