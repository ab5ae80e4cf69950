"""Shared fixtures: real SoftHSM2 tokens, directly and behind a p11-kit server."""

from __future__ import annotations

import pytest

from tests.helpers import P11KitToken, SoftHsmToken, forget_active_token
from segway_sign.hsm import module


@pytest.fixture(autouse=True)
def _isolated_pkcs11(monkeypatch, tmp_path):
    """Each test starts with no loaded module and its own dev-HSM directory."""
    monkeypatch.setenv("SEGWAY_DEV_HSM_DIR", str(tmp_path / "devhsm"))
    for var in ("SOFTHSM2_CONF", "SEGWAY_PKCS11_MODULE", "P11_KIT_SERVER_ADDRESS", "PKCS11_PROXY_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    module.reset()
    forget_active_token()
    yield
    module.reset()
    forget_active_token()


@pytest.fixture
def softhsm(tmp_path):
    """A fresh SoftHSM2 token, used directly."""
    root = tmp_path / "softhsm"
    root.mkdir()
    tok = SoftHsmToken(root)
    tok.activate()
    yield tok


@pytest.fixture
def p11kit(tmp_path):
    """A fresh SoftHSM2 token behind its own ``p11-kit server`` (stopped by PID afterwards)."""
    root = tmp_path / "p11kit"
    root.mkdir()
    tok = P11KitToken(root)
    tok.activate()
    yield tok
    module.reset()
    forget_active_token()
    tok.stop()


@pytest.fixture(params=["direct", "p11kit"])
def token(request):
    """A fresh token through each transport the project supports in tests."""
    return request.getfixturevalue("softhsm" if request.param == "direct" else "p11kit")
