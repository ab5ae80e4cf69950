"""Token EC keys on curves ``cryptography`` lacks (brainpoolP256t1, the STM32 "Brainpool 256").

Not a ``cryptography`` key, so only formats that know it (STM32 headers) accept it: it offers the
curve, the public point and ``sign_digest``. The digest is computed on the host and signed with
``CKM_ECDSA``; the raw r||s is checked by OpenSSL before it is returned.
"""

from __future__ import annotations

from pkcs11 import Mechanism

from ..errors import UsageError, VerificationError
from ..raw_ec import RawECPublicKey
from .token_key import TokenKey


class TokenRawECKey(TokenKey):
    _public: RawECPublicKey

    @property
    def curve_name(self) -> str:
        return self._public.curve_name

    @property
    def curve_oid(self) -> str:
        return self._public.curve_oid

    @property
    def key_size(self) -> int:
        return self._public.key_size

    @property
    def public_der(self) -> bytes:
        return self._public.spki_der()

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over a host digest; returns raw r||s, checked by OpenSSL with the public key."""
        if len(digest) != 32:
            raise UsageError(f"a {self.curve_name} signature is made over a 32-byte digest, got {len(digest)}")
        raw = self._raw_sign(digest, Mechanism.ECDSA)
        try:
            self._public.verify_digest(raw, digest)
        except VerificationError:
            raise VerificationError(f"the token returned a signature that does not verify with {self.uri}") from None
        return raw

    def sign(self, *args, **kwargs):
        raise UsageError(f"key {self.uri} is on {self.curve_name}, which only STM32 header signing uses")
