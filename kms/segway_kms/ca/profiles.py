"""Certificate profiles: which EKUs, subject names, lifetimes and key types a request may get."""
from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from segway_kms.config import Profile
from segway_kms.errors import InvalidArgument, NotFound, clip

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
        raise NotFound(f"no certificate profile named '{clip(name)}'") from None


MAX_CN = 64          # ub-common-name (RFC 5280)
MAX_SAN = 253        # a DNS name's limit, applied to e-mail addresses as well
MAX_SANS = 100


def check_subject(common_name: str, dns: list[str], emails: list[str]) -> None:
    """Subject names that can go into a certificate at all, before any profile looks at them."""
    if len(common_name) > MAX_CN:
        raise InvalidArgument(f"the common name '{clip(common_name)}' is {len(common_name)} characters long "
                              f"(at most {MAX_CN})")
    if len(dns) + len(emails) > MAX_SANS:
        raise InvalidArgument(f"{len(dns) + len(emails)} subject alternative names (at most {MAX_SANS})")
    for name in list(dns) + list(emails):
        if not name or len(name) > MAX_SAN or not name.isascii() or not name.isprintable() or " " in name:
            raise InvalidArgument(f"the subject alternative name '{clip(name)}' is not 1 to {MAX_SAN} printable "
                                  "ASCII characters without spaces")


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
            raise InvalidArgument(f"name '{clip(name)}' is not allowed by profile {profile.name}")
    if days < 0 or days > profile.max_days:
        raise InvalidArgument(f"lifetime {days} days exceeds the profile maximum of {profile.max_days}")
    return days or profile.max_days


def extended_key_usage(profile: Profile) -> x509.ExtendedKeyUsage:
    try:
        return x509.ExtendedKeyUsage([EKUS[e] for e in profile.ekus])
    except KeyError as exc:
        raise InvalidArgument(f"profile {profile.name}: unknown EKU {exc.args[0]}") from None
