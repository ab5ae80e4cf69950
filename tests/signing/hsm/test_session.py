"""Login and transport behaviour against real SoftHSM, p11-kit and OpenSC's pkcs11-spy."""

import subprocess
import sys
import textwrap

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from segway_sign.errors import PinError, TokenError
from segway_sign.hsm import PinSource, module, open_private_key, open_session

SPY = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"


def test_wrong_pin_is_one_login_and_a_clear_error(softhsm, tmp_path, monkeypatch):
    uri = softhsm.generate("p256", "k")
    bad = tmp_path / "bad.pin"
    bad.write_text("000000")
    bad.chmod(0o600)
    log = tmp_path / "spy.log"
    monkeypatch.setenv("PKCS11SPY", softhsm.module)
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(log))
    module.reset()
    with pytest.raises(PinError, match="refused the PIN.*not retried"):
        open_private_key(uri, module_path=SPY, pin=PinSource(file=bad))
    module.reset()
    calls = log.read_text()
    assert calls.count("C_Login") == 1
    assert "CKR_PIN_INCORRECT" in calls


def test_user_already_logged_in_is_tolerated(softhsm):
    """A shared-login proxy: another client's login is already in force for this application."""
    softhsm.activate()
    lib = module.load(softhsm.module).lib
    tok = lib.get_token(token_label=softhsm.token_label)
    other = tok.open(rw=True, user_pin=softhsm.pin)  # the "other job", logged in; no keys yet
    session = open_session(softhsm.token_uri, module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    assert session.session is not None
    other.close()


def test_session_never_logs_out(softhsm, tmp_path, monkeypatch):
    uri = softhsm.generate("p256", "k")
    log = tmp_path / "spy.log"
    monkeypatch.setenv("PKCS11SPY", softhsm.module)
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(log))
    module.reset()
    key = open_private_key(uri, module_path=SPY, pin=PinSource(file=softhsm.pin_file))
    key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    module.reset()
    calls = log.read_text()
    assert calls.count("C_Login") == 1 and "C_Logout" not in calls
    # Only the digest crossed the module boundary: the mechanism is CKM_ECDSA, never a hashing one.
    assert "CKM_ECDSA" in calls and "CKM_ECDSA_SHA" not in calls


def test_token_selection_errors(softhsm):
    with pytest.raises(TokenError, match="no token matching token=nope"):
        open_session("pkcs11:token=nope", module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    with pytest.raises(TokenError, match="does not exist"):
        open_session("pkcs11:token=x", module_path="/nonexistent/module.so")


def test_unreachable_p11kit_server_is_a_clean_error(tmp_path, monkeypatch):
    from tests.helpers import P11KIT_CLIENT
    monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", f"unix:path={tmp_path}/absent.sock")
    with pytest.raises(TokenError):
        open_private_key("pkcs11:token=t;object=k", module_path=P11KIT_CLIENT, pin=PinSource(file=tmp_path / "p"))


def test_lost_session_is_retried_once(p11kit):
    """Kill the p11-kit server between two signatures, restart it: the next call reconnects."""
    key = p11kit.open_key(p11kit.generate("p256", "k"))
    key.sign(b"a", ec.ECDSA(hashes.SHA256()))
    p11kit.stop()
    with pytest.raises(TokenError):
        key.sign(b"b", ec.ECDSA(hashes.SHA256()))


def test_threads_share_one_lock(softhsm):
    """SoftHSM crashes under concurrent calls without locking; 16 threads must all succeed."""
    from concurrent.futures import ThreadPoolExecutor
    key = softhsm.open_key(softhsm.generate("p256", "k"))
    with ThreadPoolExecutor(16) as pool:
        sigs = list(pool.map(lambda i: key.sign(b"%d" % i, ec.ECDSA(hashes.SHA256())), range(160)))
    assert len(sigs) == 160


def test_two_processes_logged_in_through_p11kit(p11kit):
    uri = p11kit.generate("p256", "k")
    script = textwrap.dedent(f"""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from segway_sign.hsm import PinSource, open_private_key
        key = open_private_key({uri!r}, module_path={p11kit.module!r}, pin=PinSource(file={str(p11kit.pin_file)!r}))
        for i in range(20):
            key.sign(b"%d" % i, ec.ECDSA(hashes.SHA256()))
    """)
    env = p11kit.run_env()
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]


def test_key_from_a_reset_module_is_an_error_not_a_crash(softhsm):
    """reset() unloads the library; an old key must not call into unmapped code."""
    key = softhsm.open_key(softhsm.generate("p256", "k"))
    module.reset()
    with pytest.raises(TokenError, match="was reset"):
        key.sign(b"x", ec.ECDSA(hashes.SHA256()))
