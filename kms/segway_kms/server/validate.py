"""Shape checks of every request, made before access control and before any work is done.

Input that no operation could accept (a key name of 10 KB, a sequence number beyond SQLite's 64-bit
integers, a lifetime past the year 9999) gets one clear INVALID_ARGUMENT whatever the caller's role, and
never reaches the error details, the audit log or the store. Checks that need state (does the key exist,
does the profile allow this name) stay with the operations.
"""
from __future__ import annotations

import re

from segway_kms.config import MAX_VALIDITY_DAYS
from segway_kms.errors import InvalidArgument, clip

MAX_NAME = 192                 # "<tenant>/<name>": 63 + 1 + 128 characters (keyring.NAME_RE)
# The tenant as keyring.NAME_RE has it, except that a leading "_" passes: reserved namespaces ("_system")
# are refused by access control, as PERMISSION_DENIED.
NAME_SHAPE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,62}/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
TENANT_SHAPE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,62}")
MAX_SEQ = 2**63 - 1            # audit sequence numbers are SQLite INTEGERs
MAX_EXPIRES = 253402300799     # 9999-12-31T23:59:59Z


def key_name(name: str, field: str = "key name") -> None:
    if not name:
        raise InvalidArgument(f"the {field} is empty: name the key '<tenant>/<name>'")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"the {field} '{clip(name)}' is {len(name)} characters long (at most {MAX_NAME})")
    if not NAME_SHAPE.fullmatch(name):
        raise InvalidArgument(f"the {field} '{clip(name)}' is not '<tenant>/<name>' (tenant: up to 63 of a-z 0-9 "
                              "_ . -; name: up to 128 of A-Z a-z 0-9 _ . -)")


def tenant(value: str) -> None:
    if not value:
        raise InvalidArgument("the tenant is empty")
    if not TENANT_SHAPE.fullmatch(value):
        raise InvalidArgument(f"the tenant '{clip(value)}' is not up to 63 of a-z 0-9 _ . -, starting with a "
                              "letter or digit")


def validity_days(days: int) -> None:
    if not 0 <= days <= MAX_VALIDITY_DAYS:
        raise InvalidArgument(f"validity_days {days} is out of range (0 to {MAX_VALIDITY_DAYS})")


def expires(value: int) -> None:
    if not 0 <= value <= MAX_EXPIRES:
        raise InvalidArgument(f"expires {value} is out of range (a Unix time up to {MAX_EXPIRES}, or 0 for never)")


def sequence(value: int) -> None:
    if not 0 <= value <= MAX_SEQ:
        raise InvalidArgument(f"from_seq {value} is out of range (at most {MAX_SEQ})")


def _key_ref(r) -> None:
    key_name(r.name)


CHECKS = {
    "GenerateKey": lambda r: (key_name(r.name), expires(r.expires)),
    "ListKeys": lambda r: tenant(r.tenant),
    "GetKey": _key_ref,
    "GetPublicKey": _key_ref,
    "Sign": lambda r: key_name(r.key.name),
    "Verify": lambda r: key_name(r.key.name),
    "RotateKey": _key_ref,
    "DisableKey": _key_ref,
    "EnableKey": _key_ref,
    "DestroyKey": _key_ref,
    "InitCa": lambda r: validity_days(r.validity_days),
    "SignCsr": lambda r: validity_days(r.validity_days),
    "IssueCertificate": lambda r: (key_name(r.key_name, "key_name"), validity_days(r.validity_days)),
    "Attest": lambda r: key_name(r.key.name),
    "ExportAudit": lambda r: sequence(r.from_seq),
}


def check(method: str, request) -> None:
    """InvalidArgument if the request of ``method`` has a malformed field."""
    fn = CHECKS.get(method)
    if fn is not None:
        fn(request)
