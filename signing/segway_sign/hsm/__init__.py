"""The only code that talks PKCS#11.

``open_private_key(uri)`` returns a ``cryptography`` private key whose operations run in the token,
or a ``TokenRawECKey`` for a curve ``cryptography`` lacks (brainpoolP256t1).

This is the edge: a URI is parsed here once, and the parsed URI goes down one way: the module it
names is loaded (:mod:`.module`), the token session it selects is shared (:mod:`.session`), and
the key it names is found in that session (:mod:`.keys`). A key holds its session, a session its
module.
"""

from __future__ import annotations

from . import module
from .keys import TokenECPrivateKey, TokenPrivateKey, TokenRSAPrivateKey, find_private_key
from .pin import PinSource
from .raw_ec_key import TokenRawECKey
from .session import TokenSession
from .uri import Pkcs11Uri


def _shared_session(uri: Pkcs11Uri, module_path: str | None, pin: PinSource, login: bool) -> TokenSession:
    return TokenSession.shared(module.load(module.resolve(module_path, uri.module_path)), uri, pin, login)


def open_session(uri: str | Pkcs11Uri, *, module_path: str | None = None, pin: PinSource = PinSource(),
                 login: bool = True) -> TokenSession:
    parsed = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
    return _shared_session(parsed, module_path, pin, login)


def open_private_key(uri: str | Pkcs11Uri, *, module_path: str | None = None,
                     pin: PinSource = PinSource()) -> TokenPrivateKey | TokenRawECKey:
    parsed = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
    return find_private_key(_shared_session(parsed, module_path, pin, True), parsed)


__all__ = ["PinSource", "Pkcs11Uri", "TokenSession", "TokenPrivateKey", "TokenRSAPrivateKey",
           "TokenECPrivateKey", "TokenRawECKey", "open_session", "open_private_key"]
