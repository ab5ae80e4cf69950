"""Which PKCS#11 module to load, and loading it once per process.

Order: ``--module``, then ``SEGWAY_PKCS11_MODULE``, then the URI's ``module-path``, then the
project's development SoftHSM (see :mod:`.devhsm`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pkcs11

from ..errors import TokenError
from . import devhsm

# python-pkcs11 releases the GIL on every call and initialises modules with NULL args, which
# SoftHSM takes as "no locking": concurrent calls corrupt its heap. One lock for every call into
# any module keeps us safe, and also bounds calls in flight to one per process (pkcs11-proxy's
# client pool breaks beyond eight).
MODULE_LOCK = threading.RLock()

_loaded: dict[str, pkcs11.lib] = {}


def resolve(explicit: str | None, uri_module: str | None = None) -> str:
    for candidate in (explicit, os.environ.get("SEGWAY_PKCS11_MODULE"), uri_module):
        if candidate:
            return candidate
    return devhsm.default_module()


def load(path: str) -> pkcs11.lib:
    with MODULE_LOCK:
        if path in _loaded:
            return _loaded[path]
        if not Path(path).exists():
            raise TokenError(f"PKCS#11 module {path} does not exist")
        if transport(path) == "pkcs11-proxy":
            socket = os.environ.get("PKCS11_PROXY_SOCKET", "")
            if not socket:
                raise TokenError("pkcs11-proxy module selected but PKCS11_PROXY_SOCKET is not set")
            if socket.startswith("tls://") and not os.environ.get("PKCS11_PROXY_TLS_PSK_FILE"):
                raise TokenError(f"PKCS11_PROXY_SOCKET={socket} uses TLS but PKCS11_PROXY_TLS_PSK_FILE is not set")
        try:
            lib = pkcs11.lib(path)
        except pkcs11.exceptions.PKCS11Error as err:
            raise TokenError(f"cannot initialise PKCS#11 module {path}: {_describe(err)}"
                             f"{_transport_hint(path)}") from None
        except RuntimeError as err:  # dlopen failure
            raise TokenError(f"cannot load PKCS#11 module {path}: {err}") from None
        _loaded[path] = lib
        return lib


def is_loaded(path: str, lib: pkcs11.lib) -> bool:
    """Whether ``lib`` is still the loaded instance of ``path`` (not finalized and unloaded)."""
    return _loaded.get(path) is lib


def reinitialize(path: str) -> None:
    """C_Finalize + C_Initialize: SoftHSM (also behind a p11-kit server, which starts one per
    connection) lists its tokens only when initialised."""
    with MODULE_LOCK:
        lib = _loaded.get(path)
        if lib is not None:
            try:
                lib.reinitialize()
            except pkcs11.exceptions.PKCS11Error as err:
                raise TokenError(f"cannot re-initialise PKCS#11 module {path}: {_describe(err)}") from None


def transport(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("libpkcs11-proxy"):
        return "pkcs11-proxy"
    if name.startswith("p11-kit-client"):
        return "p11-kit"
    return "direct"


def _transport_hint(path: str) -> str:
    kind = transport(path)
    if kind == "pkcs11-proxy":
        return f" (is the pkcs11-daemon at PKCS11_PROXY_SOCKET={os.environ.get('PKCS11_PROXY_SOCKET')} reachable?)"
    if kind == "p11-kit":
        return f" (is the p11-kit server at P11_KIT_SERVER_ADDRESS={os.environ.get('P11_KIT_SERVER_ADDRESS')} running?)"
    return ""


def _describe(err: Exception) -> str:
    return type(err).__name__ + (f": {err}" if str(err) else "")


def reset() -> None:
    """Forget every session and finalize loaded modules, so the next load re-reads its environment.

    For tools that switch tokens within one process (test suites); a signing run never needs it.
    """
    from . import session
    with MODULE_LOCK:
        session._SESSIONS.clear()
        session._KEEP_ALIVE.clear()
        for path, lib in _loaded.items():
            try:
                lib.finalize()
            except pkcs11.exceptions.PKCS11Error:
                pass  # a remote module whose server is gone: nothing left to finalize
            # Unload too: some modules (p11-kit-client, pkcs11-spy) read their environment only
            # when first loaded.
            pkcs11.unload(path)
        _loaded.clear()
