"""The only code that talks PKCS#11.

``open_private_key(uri)`` returns a ``cryptography`` private key whose operations run in the token,
or a ``TokenRawECKey`` for a curve ``cryptography`` lacks (brainpoolP256t1).
"""

from __future__ import annotations

from . import module
from .keys import TokenECPrivateKey, TokenPrivateKey, TokenRSAPrivateKey, find_private_key
from .pin import PinSource
from .raw_ec_key import TokenRawECKey
from .session import TokenSession
from .uri import Pkcs11Uri


def open_session(uri: str | Pkcs11Uri, *, module_path: str | None = None, pin: PinSource = PinSource(),
                 login: bool = True) -> TokenSession:
    parsed = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
    return TokenSession.get(module.resolve(module_path, parsed.module_path), parsed, pin, login)


def open_private_key(uri: str | Pkcs11Uri, *, module_path: str | None = None,
                     pin: PinSource = PinSource()) -> TokenPrivateKey:
    parsed = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
    return find_private_key(open_session(parsed, module_path=module_path, pin=pin), parsed)


__all__ = ["PinSource", "Pkcs11Uri", "TokenSession", "TokenPrivateKey", "TokenRSAPrivateKey",
           "TokenECPrivateKey", "TokenRawECKey", "open_session", "open_private_key"]
