"""Which PKCS#11 module to load, and the one object per loaded module that owns its state.

Order: ``--module``, then ``SEGWAY_PKCS11_MODULE``, then the URI's ``module-path``, then the
project's development SoftHSM (see :mod:`.devhsm`).

As in python-pkcs11 (lib → slot → token → session), each child holds its parent: a
:class:`Module` holds the library, the sessions opened on it and the process-wide lock; a token
session holds its module; a token key holds its session.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Callable, Hashable, TypeVar

import pkcs11

from ..errors import TokenError
from . import devhsm

T = TypeVar("T")

# python-pkcs11 releases the GIL on every call and initialises modules with NULL args, which
# SoftHSM takes as "no locking": concurrent calls corrupt its heap. One lock for every call into
# any module keeps us safe, and also bounds calls in flight to one per process (pkcs11-proxy's
# client pool breaks beyond eight).
LOCK = threading.RLock()

_loaded: dict[str, "Module"] = {}


def describe(err: Exception) -> str:
    """A PKCS#11 (or loader) error in one line: its class, and its message when it has one."""
    return type(err).__name__ + (f" ({err})" if str(err) else "")


def resolve(explicit: str | None, uri_module: str | None = None) -> str:
    for candidate in (explicit, os.environ.get("SEGWAY_PKCS11_MODULE"), uri_module):
        if candidate:
            return candidate
    return devhsm.default_module()


def transport(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("libpkcs11-proxy"):
        return "pkcs11-proxy"
    if name.startswith("p11-kit-client"):
        return "p11-kit"
    return "direct"


def _hint(kind: str) -> str:
    """Where a remote module's server is expected, for an error message."""
    if kind == "pkcs11-proxy":
        return f" (is the pkcs11-daemon at PKCS11_PROXY_SOCKET={os.environ.get('PKCS11_PROXY_SOCKET')} reachable?)"
    if kind == "p11-kit":
        return f" (is the p11-kit server at {_p11kit_address()[0]} running?)"
    return ""


def _p11kit_address() -> tuple[str, str]:
    """How to name the p11-kit server's address, and the address itself (p11-kit-client's default
    when P11_KIT_SERVER_ADDRESS is not set)."""
    address = os.environ.get("P11_KIT_SERVER_ADDRESS")
    if address:
        return f"P11_KIT_SERVER_ADDRESS={address}", address
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    default = f"unix:path={runtime}/p11-kit/pkcs11"
    return f"{default} (P11_KIT_SERVER_ADDRESS is not set; the client's default)", default


def _connect_error(family: int, address) -> str | None:
    """Why a connection to ``address`` fails, or None when something accepts it."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(address)
        except socket.timeout:
            return "connection timed out"
        except OSError as err:
            return err.strerror or str(err)
    return None


def _proxy_target(value: str) -> tuple[int, object] | None:
    """The socket family and address a PKCS11_PROXY_SOCKET value names (tcp://, tls://, ipc:// or a
    path), or None for a form this probe does not know."""
    for scheme in ("tcp://", "tls://"):
        if value.startswith(scheme):
            host, _, port = value[len(scheme):].rpartition(":")
            if not port.isdigit():
                return None
            return socket.AF_INET6 if host.startswith("[") else socket.AF_INET, (host.strip("[]"), int(port))
    if value.startswith("ipc://"):
        return socket.AF_UNIX, value[len("ipc://"):]
    if value.startswith("/"):
        return socket.AF_UNIX, value
    return None


def unreachable_server(kind: str) -> str | None:
    """For a remote transport: a one-line statement that its server did not answer, naming the
    address and the variable it came from; None when it answers (or cannot be probed).

    Remote client modules hide a dead server: p11-kit-client.so simply lists no slots."""
    if kind == "p11-kit":
        name, address = _p11kit_address()
        if not address.startswith("unix:path="):
            return None  # vsock and other forms: nothing to probe from here
        path = urllib.parse.unquote(address[len("unix:path="):])
        family, target, server = socket.AF_UNIX, path, "p11-kit server"
    elif kind == "pkcs11-proxy":
        value = os.environ.get("PKCS11_PROXY_SOCKET", "")
        parsed = _proxy_target(value)
        if parsed is None:
            return None
        (family, target), name, server = parsed, f"PKCS11_PROXY_SOCKET={value}", "pkcs11-daemon"
    else:
        return None
    reason = _connect_error(family, target)
    if reason is None:
        return None
    return f"the {server} at {name} did not answer ({reason})"


class Module:
    """One loaded PKCS#11 library, the sessions this process opened on it, and the lock."""

    lock = LOCK

    def __init__(self, path: str, lib: pkcs11.lib):
        self.path = path
        self.lib = lib
        self.transport = transport(path)
        self.loaded = True
        self._sessions: dict[Hashable, object] = {}
        # Sessions that hold a login are kept open until the process exits (or reset()):
        # python-pkcs11's Session.close() would C_Logout, which ends the login for every client
        # behind a proxy.
        self._keep_alive: list[pkcs11.Session] = []

    def shared(self, key: Hashable, create: Callable[[], T]) -> T:
        """The session this process shares under ``key``, created on first use."""
        with self.lock:
            if key not in self._sessions:
                self._sessions[key] = create()
            return self._sessions[key]  # type: ignore[return-value]

    @property
    def has_sessions(self) -> bool:
        return bool(self._sessions)

    def keep_alive(self, session: pkcs11.Session) -> None:
        self._keep_alive.append(session)

    def hint(self) -> str:
        return _hint(self.transport)

    def check_server(self) -> None:
        """TokenError if this module's server (p11-kit server, pkcs11-daemon) does not answer."""
        reason = unreachable_server(self.transport)
        if reason is not None:
            raise TokenError(f"{reason}; PKCS#11 module {self.path} sees no token")

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize: SoftHSM (also behind a p11-kit server, which starts one per
        connection) lists its tokens only when initialised."""
        with self.lock:
            try:
                self.lib.reinitialize()
            except pkcs11.exceptions.PKCS11Error as err:
                raise TokenError(f"cannot re-initialise PKCS#11 module {self.path}: {describe(err)}") from None

    def reset(self) -> None:
        """Forget every session, finalize and unload the library; later calls through it are errors."""
        with self.lock:
            self._sessions.clear()
            self._keep_alive.clear()
            self.loaded = False
            try:
                self.lib.finalize()
            except pkcs11.exceptions.PKCS11Error:
                pass  # a remote module whose server is gone: nothing left to finalize
            # Unload too: some modules (p11-kit-client, pkcs11-spy) read their environment only
            # when first loaded.
            pkcs11.unload(self.path)


def load(path: str) -> Module:
    """The module at ``path``, loaded once per process (until :func:`reset`)."""
    with LOCK:
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
            raise TokenError(f"cannot initialise PKCS#11 module {path}: {describe(err)}"
                             f"{_hint(transport(path))}") from None
        except RuntimeError as err:  # dlopen failure
            raise TokenError(f"cannot load PKCS#11 module {path}: {err}") from None
        _loaded[path] = Module(path, lib)
        return _loaded[path]


def reset() -> None:
    """Reset every loaded module, so the next load re-reads its environment.

    For tools that switch tokens within one process (test suites); a signing run never needs it.
    """
    with LOCK:
        for mod in _loaded.values():
            mod.reset()
        _loaded.clear()
