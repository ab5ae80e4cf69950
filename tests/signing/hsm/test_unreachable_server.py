"""A remote PKCS#11 module whose server does not answer is reported as such, naming the address.

p11-kit-client.so shows a dead or absent server as a module without slots; the CLI says which
server did not answer instead of "no token"."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from tests.fit_fixtures import EPOCH, make_unsigned_fit
from tests.helpers import P11KIT_CLIENT, P11KitToken, one_line_error, run_cli
from segway_sign.hsm import module

pytestmark = pytest.mark.skipif(not os.path.exists(P11KIT_CLIENT), reason="p11-kit-client.so is not installed")


def _client_env(address: str) -> dict[str, str]:
    return {"SEGWAY_PKCS11_MODULE": P11KIT_CLIENT, "P11_KIT_SERVER_ADDRESS": address}


def _token_info(address: str, *extra: str):
    return run_cli(["token", "info", *extra], env=_client_env(address))


def _fit_sign(address: str, tmp_path, key: str = "pkcs11:token=any;object=segway-fit"):
    unsigned = make_unsigned_fit(tmp_path / "fit")
    out = tmp_path / "signed.itb"
    res = run_cli(["fit", "sign", "--key", key, "--in", str(unsigned), "--out", str(out)],
                  env={**_client_env(address), "SOURCE_DATE_EPOCH": EPOCH})
    assert not out.exists()
    return res


def _names_dead_server(res, address: str) -> None:
    err = one_line_error(res, 1)
    assert f"p11-kit server at P11_KIT_SERVER_ADDRESS={address} did not answer" in err, err
    assert "no token matching" not in err, err


def test_nothing_listens_on_the_socket(tmp_path):
    address = f"unix:path={tmp_path}/nothing.sock"
    _names_dead_server(_token_info(address), address)
    _names_dead_server(_fit_sign(address, tmp_path), address)


def test_a_stale_socket_file(tmp_path):
    """A socket file nobody listens on (a server killed with SIGKILL leaves it behind)."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    address = f"unix:path={path}"
    err = one_line_error(_token_info(address), 1)
    assert f"P11_KIT_SERVER_ADDRESS={address} did not answer (Connection refused)" in err, err


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_server(tmp_path, how):
    root = tmp_path / "p11kit"
    root.mkdir()
    tok = P11KitToken(root)
    try:
        address = tok.env["P11_KIT_SERVER_ADDRESS"]
        uri = tok.generate("rsa2048", "segway-fit")
        module.reset()
        listed = run_cli(["token", "info", "--json"], env=_client_env(address))
        assert listed.returncode == 0, listed.stderr.decode()
        assert [t["label"] for t in json.loads(listed.stdout)["tokens"]] == [tok.token_label]
        if how == "SIGKILL":
            os.killpg(tok.server.pid, signal.SIGKILL)
            tok.server.wait()
        else:
            tok.stop()
        _names_dead_server(_token_info(address), address)
        _names_dead_server(_fit_sign(address, tmp_path, uri), address)
    finally:
        tok.stop()


def test_the_client_default_address_is_named(tmp_path):
    env = {"SEGWAY_PKCS11_MODULE": P11KIT_CLIENT, "XDG_RUNTIME_DIR": str(tmp_path)}
    res = run_cli(["token", "info"], env=env)
    err = one_line_error(res, 1)
    assert f"p11-kit server at unix:path={tmp_path}/p11-kit/pkcs11 (P11_KIT_SERVER_ADDRESS is not set" in err, err


def test_pkcs11_proxy_socket_probe(monkeypatch):
    """The pkcs11-daemon probe (libpkcs11-proxy.so itself is opt-in, see test_pkcs11_proxy.py)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: a connect is refused
        monkeypatch.setenv("PKCS11_PROXY_SOCKET", f"tcp://127.0.0.1:{port}")
        assert module.unreachable_server("pkcs11-proxy") == \
            f"the pkcs11-daemon at PKCS11_PROXY_SOCKET=tcp://127.0.0.1:{port} did not answer (Connection refused)"
        sock.listen()
        assert module.unreachable_server("pkcs11-proxy") is None
