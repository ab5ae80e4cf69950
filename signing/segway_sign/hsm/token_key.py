"""What every private key in a token shares: the session it lives in, and signing through it.

A token key holds its session (which holds its module), its URI, label and ``CKA_ID``, and finds
the private object again by label and ID on every signature, so a session reopened after a lost
connection serves keys opened before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pkcs11 import Mechanism, ObjectClass

from ..crypto import spki_der
from ..errors import TokenError
from .session import TokenSession
from .uri import Pkcs11Uri


@dataclass
class SignStats:
    """What went to the token: the benchmark shows it does not grow with the artifact."""
    calls: int = 0
    bytes_sent: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, n: int) -> None:
        self.calls += 1
        self.bytes_sent += n
        self.sizes.append(n)


class TokenKey:
    """Base of every token private key; ``public`` is its public half as the subclass knows it."""

    def __init__(self, session: TokenSession, uri: Pkcs11Uri, label: str | None, key_id: bytes, public):
        self._session, self.uri, self.label, self.key_id = session, uri, label, key_id
        self._public = public
        self.stats = SignStats()

    def public_key(self):
        return self._public

    def _raw_sign(self, payload: bytes, mechanism: Mechanism, param=None) -> bytes:
        def op(session):
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=self.key_id, label=self.label)
            return key.sign(payload, mechanism=mechanism, mechanism_param=param)
        signature = self._session.call(op, f"signing with key {self.uri}")
        self.stats.record(len(payload))
        return signature

    def private_bytes(self, *args, **kwargs):
        raise TokenError(f"the private key {self.uri} stays in the token: it cannot be exported")

    def private_numbers(self):
        raise TokenError(f"the private key {self.uri} stays in the token: it cannot be exported")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    @property
    def public_der(self) -> bytes:
        return spki_der(self.public_key())
