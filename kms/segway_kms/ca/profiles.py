"""Certificate profiles: which EKUs, subject names, lifetimes and key types a request may get."""
from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from segway_kms.config import Profile
from segway_kms.errors import InvalidArgument, NotFound

EKUS = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}


def key_type_of(public) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return {"secp256r1": "EC_P256", "secp384r1": "EC_P384"}.get(public.curve.name, public.curve.name)
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA_{public.key_size}"
    raise InvalidArgument("unsupported public key type (use EC P-256/P-384 or RSA 2048/3072)")


def lookup(profiles: dict[str, Profile], name: str) -> Profile:
    try:
        return profiles[name]
    except KeyError:
        raise NotFound(f"no certificate profile named {name!r}") from None


def check_request(profile: Profile, public, common_name: str | None, sans: list[str], days: int) -> int:
    """Validate a request against the profile; return the lifetime in days to use."""
    key_type = key_type_of(public)
    if key_type not in profile.key_types:
        raise InvalidArgument(f"profile {profile.name} does not allow {key_type} keys")
    names = ([common_name] if common_name else []) + list(sans)
    if not names:
        raise InvalidArgument("the request names no subject (no CN and no SAN)")
    for name in names:
        if not any(re.fullmatch(p, name) for p in profile.san_patterns):
            raise InvalidArgument(f"name {name!r} is not allowed by profile {profile.name}")
    if days < 0 or days > profile.max_days:
        raise InvalidArgument(f"lifetime {days} days exceeds the profile maximum of {profile.max_days}")
    return days or profile.max_days


def extended_key_usage(profile: Profile) -> x509.ExtendedKeyUsage:
    try:
        return x509.ExtendedKeyUsage([EKUS[e] for e in profile.ekus])
    except KeyError as exc:
        raise InvalidArgument(f"profile {profile.name}: unknown EKU {exc.args[0]}") from None
