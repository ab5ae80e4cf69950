"""A logged-in view of one token, shared by every key of a process; it holds its module.

Rules (see the pkcs11-proxy behaviour in the project specs):
- the token is chosen by label/serial/manufacturer/model, never by slot number;
- one ``C_Login`` per session attempt: a wrong PIN is reported, never retried;
- ``CKR_USER_ALREADY_LOGGED_IN`` is fine (pkcs11-proxy shares one login between all clients);
- we never call ``C_Logout``: another job behind the same proxy may be using the login;
- every call holds the process-wide module lock;
- a call failing with ``DeviceError``/``SessionHandleInvalid`` (proxy or daemon restarted) is
  retried once on a fresh session.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import pkcs11
from pkcs11 import Attribute, ObjectClass, TokenFlag
from pkcs11.exceptions import (DeviceError, DeviceRemoved, GeneralError, NoSuchToken,
                               PinExpired, PinIncorrect, PinInvalid, PinLenRange, PinLocked,
                               PKCS11Error, SessionHandleInvalid, TokenNotPresent,
                               TokenNotRecognised, UserAlreadyLoggedIn)

from ..errors import PinError, TokenError
from .module import Module, describe
from .pin import PinSource
from .uri import Pkcs11Uri

T = TypeVar("T")
RETRYABLE = (DeviceError, DeviceRemoved, SessionHandleInvalid)
# SoftHSM rewrites its token file on every login; a process reading it meanwhile sees no token or a
# general error. Opening (never a rejected PIN) is retried a few times for that.
TRANSIENT_AT_OPEN = (NoSuchToken, TokenNotPresent, TokenNotRecognised, GeneralError, DeviceError)
OPEN_ATTEMPTS = 6


def initialized(token: pkcs11.Token) -> bool:
    """SoftHSM always offers one empty slot; an uninitialised token is never a signing target."""
    return bool(token.flags & TokenFlag.TOKEN_INITIALIZED)


@contextmanager
def _quiet_operation_finalizers() -> Iterator[None]:
    """Drop python-pkcs11's echo of a lost-session error that ``call`` handles.

    python-pkcs11 0.10.1 marks an operation (e.g. the search behind ``get_key``) active before its
    ``C_*Init``; when the init fails on a lost session (a restarted pkcs11-daemon), the operation's
    ``__del__`` calls ``C_*Final`` on the dead handle and prints that failure as a traceback (through
    ``sys.excepthook``, then as "Exception ignored"), although the retry succeeds
    (``_pkcs11.pyx: OperationContext.__enter__``).
    """
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable_hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, RETRYABLE):
            previous_unraisable(unraisable)

    def except_hook(kind, value, tb) -> None:
        if not isinstance(value, RETRYABLE):
            previous_except(kind, value, tb)
    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = previous_unraisable, previous_except


class _Transient(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TokenSession:
    """An open, logged-in session on the token a URI names."""

    def __init__(self, module: Module, uri: Pkcs11Uri, pin: PinSource, login: bool = True):
        self.module = module
        self.uri = uri.token_only
        self.pin_source = pin
        self.want_login = login
        self._pin: str | None = None
        self.token = self._retrying(self._select_token, reinit=True)
        self.session = self._retrying(self._open)

    def _retrying(self, step: Callable[[], T], reinit: bool = False) -> T:
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                return step()
            except _Transient as err:
                if attempt == OPEN_ATTEMPTS:
                    raise TokenError(err.message) from None
                time.sleep(0.1 * attempt)
                # A token missing from the list stays missing until the module lists tokens again,
                # which it does on C_Initialize; only safe while no session of ours uses the module.
                if reinit and not self.module.has_sessions:
                    self.module.reinitialize()
        raise AssertionError("unreachable")

    @classmethod
    def shared(cls, module: Module, uri: Pkcs11Uri, pin: PinSource, login: bool = True) -> "TokenSession":
        """The session on the token ``uri`` selects that every key of this process shares."""
        key = (uri.token, uri.serial, uri.manufacturer, uri.model, login)
        return module.shared(key, lambda: cls(module, uri, pin, login))

    @property
    def label(self) -> str:
        return self.token.label

    def _select_token(self) -> pkcs11.Token:
        u = self.uri
        criteria = {k: v for k, v in (("token_label", u.token), ("token_serial", u.serial.encode() if u.serial else None),
                                      ("manufacturer_id", u.manufacturer)) if v is not None}
        with self.module.lock:
            try:
                tokens = [t for t in self.module.lib.get_tokens(**criteria)
                          if initialized(t) and (u.model is None or t.model.strip() == u.model)]
            except TRANSIENT_AT_OPEN as err:
                raise _Transient(f"cannot list tokens of {self.module.path}: {describe(err)}") from None
            except PKCS11Error as err:
                raise TokenError(f"cannot list tokens of {self.module.path}: {describe(err)}"
                                 f"{self.module.hint()}") from None
        wanted = ", ".join(f"{k}={v}" for k, v in (("token", u.token), ("serial", u.serial),
                                                    ("manufacturer", u.manufacturer), ("model", u.model)) if v)
        if not tokens:
            self.module.check_server()  # a remote module shows a dead server as no tokens at all
            # SoftHSM shows no token while another process rewrites its token file at login, so
            # an empty match is retried like the other transient errors before it is reported.
            raise _Transient(f"no token matching {wanted or 'any'} in {self.module.path}")
        if len(tokens) > 1:
            found = ", ".join(f"'{t.label}' (serial {t.serial.decode(errors='replace')})" for t in tokens)
            raise TokenError(f"several tokens match {wanted or 'the URI'}: {found}; name one by token= or serial=")
        return tokens[0]

    def _open(self) -> pkcs11.Session:
        with self.module.lock:
            try:
                public = self.token.open(rw=True)
            except TRANSIENT_AT_OPEN as err:
                raise _Transient(f"token '{self.token.label}' is not available: {describe(err)}") from None
            except PKCS11Error as err:
                raise TokenError(f"cannot open a session on token '{self.token.label}': {describe(err)}") from None
            if not self.want_login or self._logged_in(public):
                return public
            if self._pin is None:
                self._pin = self.pin_source.read(self.token.label)
            try:
                session = self.token.open(rw=True, user_pin=self._pin)
            except UserAlreadyLoggedIn:
                return public  # another client of a shared-login proxy logged in first
            except PinIncorrect:
                raise PinError(f"token '{self.token.label}' refused the PIN from {self.pin_source.describe()} "
                               "(not retried, so the token is not locked)") from None
            except PinLocked:
                raise PinError(f"the user PIN of token '{self.token.label}' is locked") from None
            except (PinInvalid, PinLenRange, PinExpired) as err:
                raise PinError(f"token '{self.token.label}' rejected the PIN: {describe(err)}") from None
            except TRANSIENT_AT_OPEN as err:
                raise _Transient(f"login to token '{self.token.label}' failed: {describe(err)}") from None
            except PKCS11Error as err:
                raise TokenError(f"login to token '{self.token.label}' failed: {describe(err)}") from None
            self.module.keep_alive(session)
            return session

    @staticmethod
    def _logged_in(session: pkcs11.Session) -> bool:
        """Private objects are visible only after a login; probe instead of logging in twice."""
        found = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.PRIVATE: True}))
        return bool(found)

    def call(self, operation: Callable[[pkcs11.Session], T], what: str) -> T:
        """Run ``operation(session)`` under the module lock, retrying once on a lost session."""
        with self.module.lock, _quiet_operation_finalizers():
            if not self.module.loaded:
                # Module.reset() unloaded the library: calling into it would crash the process.
                raise TokenError(f"{what}: the PKCS#11 module {self.module.path} was reset; open the key again")
            for attempt in (1, 2):
                try:
                    return operation(self.session)
                except RETRYABLE as err:
                    if attempt == 2:
                        raise TokenError(f"{what} failed twice on token '{self.label}': {describe(err)}") from None
                    self.session = self._retrying(self._open)
                except PKCS11Error as err:
                    raise TokenError(f"{what} failed on token '{self.label}': {describe(err)}") from None
        raise AssertionError("unreachable")
