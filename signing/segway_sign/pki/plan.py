"""Key-ceremony plans (``conf/pki-*.yaml``): which keys to create, for what, with which certificates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import InputError
from ..hsm.keygen import KEY_KINDS, RAW_KINDS
from ..hsm.uri import Pkcs11Uri

PURPOSES = ("fit", "stm32", "hab", "verity", "release", "fip")
_NAME_FIELDS = {"CN": "COMMON_NAME", "O": "ORGANIZATION_NAME", "OU": "ORGANIZATIONAL_UNIT_NAME",
                "C": "COUNTRY_NAME", "L": "LOCALITY_NAME", "ST": "STATE_OR_PROVINCE_NAME"}


@dataclass(frozen=True)
class KeySpec:
    label: str
    kind: str
    subject: dict[str, str]
    validity_days: int
    purpose: str | None = None  # None for the root
    key_name_hint: str | None = None  # fit: U-Boot key-<hint>
    token: Pkcs11Uri | None = None


@dataclass
class Plan:
    name: str
    token: Pkcs11Uri
    root: KeySpec
    keys: list[KeySpec] = field(default_factory=list)
    sha256: str = ""

    def token_for(self, spec: KeySpec) -> Pkcs11Uri:
        return spec.token or self.token


def _subject(raw, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or "CN" not in raw:
        raise InputError(f"{where}: subject must be a mapping with at least CN")
    unknown = set(raw) - set(_NAME_FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown subject field(s) {', '.join(sorted(unknown))}")
    return {k: str(v) for k, v in raw.items()}


def _spec(raw, where: str, purpose_required: bool) -> KeySpec:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: must be a mapping")
    allowed = {"label", "key", "subject", "validity_days", "purpose", "key_name_hint", "token"}
    unknown = set(raw) - allowed
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for req in ("label", "key", "subject") + (("purpose",) if purpose_required else ()):
        if req not in raw:
            raise InputError(f"{where}: missing '{req}'")
    if raw["key"] not in KEY_KINDS:
        raise InputError(f"{where}: key type {raw['key']!r} is not one of {', '.join(KEY_KINDS)}")
    purpose = raw.get("purpose")
    if purpose_required and purpose not in PURPOSES:
        raise InputError(f"{where}: purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    if raw["key"] in RAW_KINDS and purpose != "stm32":
        # Only the STM32 header signer can use these keys (cryptography lacks the curve).
        raise InputError(f"{where}: key type {raw['key']!r} is only for purpose stm32 "
                         f"(got {purpose or 'the root CA'})")
    days = raw.get("validity_days", 3650)
    if not isinstance(days, int) or days <= 0:
        raise InputError(f"{where}: validity_days must be a positive integer")
    token = Pkcs11Uri.parse(raw["token"]) if raw.get("token") else None
    if purpose == "fit" and not raw.get("key_name_hint"):
        raise InputError(f"{where}: a fit key needs key_name_hint (U-Boot's key-<hint> node)")
    return KeySpec(str(raw["label"]), raw["key"], _subject(raw["subject"], where), days, purpose,
                   raw.get("key_name_hint"), token)


def load_plan(path: Path) -> Plan:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"plan {path} does not exist") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"plan {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise InputError(f"plan {path}: top level must be a mapping")
    for req in ("token", "root", "keys"):
        if req not in raw:
            raise InputError(f"plan {path}: missing '{req}'")
    unknown = set(raw) - {"name", "token", "root", "keys"}
    if unknown:
        raise InputError(f"plan {path}: unknown field(s) {', '.join(sorted(unknown))}")
    if not isinstance(raw["keys"], list) or not raw["keys"]:
        raise InputError(f"plan {path}: 'keys' must be a non-empty list")
    plan = Plan(str(raw.get("name", path.stem)), Pkcs11Uri.parse(raw["token"]),
                _spec(raw["root"], "root", False),
                [_spec(k, f"keys[{i}]", True) for i, k in enumerate(raw["keys"])],
                hashlib.sha256(text).hexdigest())
    labels = [plan.root.label] + [k.label for k in plan.keys]
    dupes = {lbl for lbl in labels if labels.count(lbl) > 1}
    if dupes:
        raise InputError(f"plan {path}: duplicate key label(s) {', '.join(sorted(dupes))}")
    return plan
