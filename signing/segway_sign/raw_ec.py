"""EC public keys on curves ``cryptography`` lacks (brainpoolP256t1), checked by OpenSSL.

``cryptography`` offers only the regular Brainpool curves, while the STM32 ROM's "Brainpool 256"
is the twisted brainpoolP256t1. Such a key is kept as its curve and uncompressed point; its
SubjectPublicKeyInfo is built with asn1crypto and every ECDSA check runs in the ``openssl``
command (``pkeyutl -verify`` over a host digest), so no elliptic-curve arithmetic lives here.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import core, keys, pem

from .crypto import ecdsa_der
from .errors import InputError, UsageError, VerificationError

# Curve name -> (named-curve OID, field size in bytes). Only curves cryptography cannot load.
RAW_CURVES = {"brainpoolP256t1": ("1.3.36.3.3.2.8.1.1.8", 32)}
_BY_OID = {oid: name for name, (oid, _) in RAW_CURVES.items()}
OPENSSL_TIMEOUT = 120


def curve_from_ec_params(ec_params: bytes) -> str | None:
    """The RAW_CURVES name a DER ECParameters (CKA_EC_PARAMS) names, or None for any other curve."""
    try:
        params = keys.ECDomainParameters.load(ec_params)
        if params.name != "named":
            return None
        return _BY_OID.get(params.chosen.dotted)
    except (ValueError, TypeError):
        return None


def decode_ec_point(value: bytes, size: int) -> bytes:
    """The uncompressed point 0x04||X||Y from CKA_EC_POINT, DER OCTET STRING-wrapped or not."""
    if len(value) != 1 + 2 * size:
        try:
            value = core.OctetString.load(value).native
        except (ValueError, TypeError):
            pass
    if len(value) != 1 + 2 * size or value[0] != 4:
        raise InputError(f"EC point of {len(value)} bytes is not an uncompressed {8 * size}-bit point")
    return bytes(value)


@dataclass(frozen=True)
class RawECPublicKey:
    """A public key on a RAW_CURVES curve: ``point`` is the uncompressed 0x04||X||Y."""

    curve_name: str
    point: bytes

    def __post_init__(self) -> None:
        if self.curve_name not in RAW_CURVES:
            raise UsageError(f"curve {self.curve_name} is not one of {', '.join(RAW_CURVES)}")
        decode_ec_point(self.point, self.size)

    @classmethod
    def from_xy(cls, curve_name: str, xy: bytes) -> "RawECPublicKey":
        return cls(curve_name, b"\x04" + bytes(xy))

    @classmethod
    def from_spki(cls, der: bytes) -> "RawECPublicKey | None":
        """The key of a DER SubjectPublicKeyInfo if it is on a RAW_CURVES curve, else None."""
        try:
            info = keys.PublicKeyInfo.load(der)
            if info["algorithm"]["algorithm"].native != "ec":
                return None
            curve = curve_from_ec_params(info["algorithm"]["parameters"].dump())
            if curve is None:
                return None
            return cls(curve, bytes(info["public_key"].native))
        except (ValueError, TypeError, KeyError, InputError):
            return None

    @property
    def curve_oid(self) -> str:
        return RAW_CURVES[self.curve_name][0]

    @property
    def size(self) -> int:
        return RAW_CURVES[self.curve_name][1]

    @property
    def key_size(self) -> int:
        return 8 * self.size

    @property
    def xy(self) -> bytes:
        return self.point[1:]

    def spki_der(self) -> bytes:
        return keys.PublicKeyInfo({
            "algorithm": {"algorithm": "ec",
                          "parameters": keys.ECDomainParameters(name="named", value=self.curve_oid)},
            "public_key": self.point,
        }).dump()

    def spki_pem(self) -> bytes:
        return pem.armor("PUBLIC KEY", self.spki_der())

    def verify_digest(self, raw_signature: bytes, digest: bytes) -> None:
        """Check a raw r||s ECDSA signature over ``digest`` with ``openssl pkeyutl``; raise if bad."""
        if not openssl_verifies(self, raw_signature, digest):
            raise VerificationError(f"ECDSA {self.curve_name} signature does not verify")


def openssl_verifies(public: RawECPublicKey, raw_signature: bytes, digest: bytes) -> bool:
    """True when OpenSSL accepts ``raw_signature`` (r||s) over the host digest ``digest``.

    Without ``-rawin`` pkeyutl takes its input as the message digest, as CKM_ECDSA does.
    """
    if len(raw_signature) != 2 * public.size:
        return False
    sig_der = ecdsa_der(raw_signature)
    with tempfile.TemporaryDirectory(prefix="segway-ecdsa-") as tmp:
        d = Path(tmp)
        (d / "pub.pem").write_bytes(public.spki_pem())
        (d / "sig.der").write_bytes(sig_der)
        (d / "digest.bin").write_bytes(digest)
        try:
            res = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(d / "pub.pem"),
                                  "-sigfile", str(d / "sig.der"), "-in", str(d / "digest.bin")],
                                 capture_output=True, timeout=OPENSSL_TIMEOUT)
        except FileNotFoundError:
            raise UsageError(f"checking {public.curve_name} signatures needs the openssl command") from None
        except subprocess.TimeoutExpired:
            raise VerificationError("openssl did not finish checking the signature") from None
    return res.returncode == 0 and b"Verified Successfully" in res.stdout
