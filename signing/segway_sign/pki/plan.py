"""Key-ceremony plans (``conf/pki-*.yaml``): which keys to create, for what, with which certificates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import InputError, UsageError, reading
from ..hsm.keygen import KEY_KINDS, RAW_KINDS
from ..hsm.uri import Pkcs11Uri

PURPOSES = ("fit", "stm32", "hab", "hab-csf", "hab-img", "ahab", "ahab-sgk", "verity", "release", "fip", "fip-chain",
            "optee-ta")
# Keys certified by another key of the plan instead of the root: purpose -> the issuer's purpose.
ISSUED_BY = {"hab-csf": "hab", "hab-img": "hab", "ahab-sgk": "ahab"}
# Table sizes the boot ROMs take (STM32MP13/MP2 PKHTH tables hold up to eight keys).
TABLE_SIZES = {"hab": 4, "ahab": 4, "stm32": 8}
# Key types each purpose can sign with (what the verifier of that purpose accepts).
PURPOSE_KINDS = {
    "stm32": ("p256", "bp256t1"),          # the STM32MP ROM: ECDSA P-256 or brainpoolP256t1
    "fip": ("p256",),                      # TF-A's TBBR chain as segway-sign fip builds it
    "fip-chain": ("p256",),                # its keys below the ROT key: one KEY_ALG for the whole chain
    "optee-ta": ("rsa2048", "rsa3072", "rsa4096"),  # OP-TEE checks TAs with RSA (TA_PUBLIC_KEY)
    "hab": ("rsa2048", "rsa3072", "rsa4096", "p256", "p384"),
    "hab-csf": ("rsa2048", "rsa3072", "rsa4096", "p256", "p384"),
    "hab-img": ("rsa2048", "rsa3072", "rsa4096", "p256", "p384"),
}
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
    issuer: str | None = None  # label of the plan key that certifies it (HAB CSF/IMG, AHAB SGK)


@dataclass
class Plan:
    name: str
    token: Pkcs11Uri
    root: KeySpec
    keys: list[KeySpec] = field(default_factory=list)
    sha256: str = ""

    def token_for(self, spec: KeySpec) -> Pkcs11Uri:
        return spec.token or self.token

    def of(self, purpose: str) -> list[KeySpec]:
        """The plan's keys of one purpose, in plan order (the order of their key tables)."""
        return [k for k in self.keys if k.purpose == purpose]

    @property
    def specs(self) -> list[KeySpec]:
        return [self.root] + self.keys


def _names(keys) -> str:
    return ", ".join(sorted(str(k) for k in keys))


def _uri(raw, where: str) -> Pkcs11Uri:
    if not isinstance(raw, str):
        raise InputError(f"{where}: token must be a pkcs11: URI string")
    try:
        return Pkcs11Uri.parse(raw)
    except UsageError as err:  # in a plan file a bad URI is bad input, not a bad command line
        raise InputError(f"{where}: token URI {raw!r}: {err}") from None


def _subject(raw, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or "CN" not in raw:
        raise InputError(f"{where}: subject must be a mapping with at least CN")
    unknown = set(raw) - set(_NAME_FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown subject field(s) {_names(unknown)}")
    subject = {}
    for k, v in raw.items():
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise InputError(f"{where}: subject field {k} must be a text")
        try:  # the checks the certificate builder applies (lengths, country codes)
            x509.NameAttribute(getattr(NameOID, _NAME_FIELDS[k]), str(v))
        except ValueError as err:
            raise InputError(f"{where}: subject field {k}: {str(err).splitlines()[0]}") from None
        subject[k] = str(v)
    return subject


def _text(raw: dict, name: str, where: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value):
        raise InputError(f"{where}: {name} must be a non-empty text")
    return str(value)


def _spec(raw, where: str, purpose_required: bool) -> KeySpec:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: must be a mapping")
    allowed = {"label", "key", "subject", "validity_days", "purpose", "key_name_hint", "token", "issuer"}
    unknown = set(raw) - allowed
    if unknown:
        raise InputError(f"{where}: unknown field(s) {_names(unknown)}")
    for req in ("label", "key", "subject") + (("purpose",) if purpose_required else ()):
        if req not in raw:
            raise InputError(f"{where}: missing '{req}'")
    kind = raw["key"]
    if not isinstance(kind, str) or kind not in KEY_KINDS:
        raise InputError(f"{where}: key type {kind!r} is not one of {', '.join(KEY_KINDS)}")
    purpose = raw.get("purpose")
    if purpose is not None and not isinstance(purpose, str):
        raise InputError(f"{where}: purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    if purpose_required and purpose not in PURPOSES:
        raise InputError(f"{where}: purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    if kind in RAW_KINDS and purpose != "stm32":
        # Only the STM32 header signer can use these keys (cryptography lacks the curve).
        raise InputError(f"{where}: key type {kind!r} is only for purpose stm32 "
                         f"(got {purpose or 'the root CA'})")
    days = raw.get("validity_days", 3650)
    if not isinstance(days, int) or isinstance(days, bool) or not 0 < days <= 100 * 366:
        raise InputError(f"{where}: validity_days must be a positive integer (at most 100 years)")
    token = _uri(raw["token"], where) if raw.get("token") else None
    hint = _text(raw, "key_name_hint", where)
    if purpose == "fit" and not hint:
        raise InputError(f"{where}: a fit key needs key_name_hint (U-Boot's key-<hint> node)")
    label = _text(raw, "label", where)
    if label is None:
        raise InputError(f"{where}: label must be a non-empty text")
    issuer = _text(raw, "issuer", where)
    if purpose in ISSUED_BY and issuer is None:
        raise InputError(f"{where}: a {purpose} key needs issuer (the label of its {ISSUED_BY[purpose]} key)")
    if purpose not in ISSUED_BY and issuer is not None:
        raise InputError(f"{where}: only {', '.join(ISSUED_BY)} keys name an issuer (the root certifies the others)")
    if purpose in PURPOSE_KINDS and kind not in PURPOSE_KINDS[purpose]:
        raise InputError(f"{where}: a {purpose} key must be one of {', '.join(PURPOSE_KINDS[purpose])}, not {kind}")
    return KeySpec(label, kind, _subject(raw["subject"], where), days, purpose, hint, token, issuer)


def _family(kind: str) -> str:
    return "rsa" if kind.startswith("rsa") else "ec"


def validate(plan: Plan, where: str) -> None:
    """Checks across keys, so that a ceremony never creates keys for a plan it cannot finish."""
    labels = [plan.root.label] + [k.label for k in plan.keys]
    dupes = {lbl for lbl in labels if labels.count(lbl) > 1}
    if dupes:
        raise InputError(f"{where}: duplicate key label(s) {', '.join(sorted(dupes))}")
    for purpose, most in TABLE_SIZES.items():
        count = len(plan.of(purpose))
        if count > most:
            raise InputError(f"{where}: a {purpose} key table holds 1 to {most} keys, the plan has {count}")
    hints = [k.key_name_hint for k in plan.of("fit")]
    dupes = {h for h in hints if hints.count(h) > 1}
    if dupes:
        raise InputError(f"{where}: duplicate fit key_name_hint(s) {', '.join(sorted(dupes))}")
    ahab = plan.of("ahab")
    if len({k.kind for k in ahab}) > 1:
        raise InputError(f"{where}: the ahab SRKs must all be of one key type (the table takes one), got "
                         f"{', '.join(sorted({k.kind for k in ahab}))}")
    if plan.of("fip-chain") and not plan.of("fip"):
        raise InputError(f"{where}: fip-chain keys (TF-A's trusted-world, non-trusted-world and content keys) "
                         "need the fip key, the root of trust that carries them")
    hab = plan.of("hab")
    if len({_family(k.kind) for k in hab}) > 1:
        raise InputError(f"{where}: the hab SRKs must be all RSA or all EC")
    seen: dict[str, KeySpec] = {}
    for i, spec in enumerate(plan.keys):
        if spec.issuer is not None:
            issuer = seen.get(spec.issuer)
            wanted = ISSUED_BY[spec.purpose]
            if issuer is None or issuer.purpose != wanted:
                raise InputError(f"{where}: keys[{i}] ({spec.label}): issuer {spec.issuer!r} is not a {wanted} "
                                 "key listed before it")
            if spec.purpose.startswith("hab") and _family(spec.kind) != _family(issuer.kind):
                raise InputError(f"{where}: keys[{i}] ({spec.label}): HAB signs with keys of its SRK's type "
                                 f"({issuer.kind}), not {spec.kind}")
        seen[spec.label] = spec


def load_plan(path: Path, text: bytes | None = None) -> Plan:
    """Load a plan file (or ``text``, its content, already read from ``path``)."""
    if text is None:
        with reading("plan", path):
            text = path.read_bytes()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"plan {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(f"plan {path} is nested too deeply") from None
    except (ValueError, OverflowError) as err:  # e.g. a value the YAML constructors cannot convert
        raise InputError(f"plan {path} is not valid YAML: {str(err).splitlines()[0] if str(err) else err}") from None
    if not isinstance(raw, dict):
        raise InputError(f"plan {path}: top level must be a mapping")
    for req in ("token", "root", "keys"):
        if req not in raw:
            raise InputError(f"plan {path}: missing '{req}'")
    unknown = set(raw) - {"name", "token", "root", "keys"}
    if unknown:
        raise InputError(f"plan {path}: unknown field(s) {_names(unknown)}")
    if not isinstance(raw["keys"], list) or not raw["keys"]:
        raise InputError(f"plan {path}: 'keys' must be a non-empty list")
    name = raw.get("name", path.stem)
    if not isinstance(name, (str, int)) or isinstance(name, bool):
        raise InputError(f"plan {path}: name must be a text")
    plan = Plan(str(name), _uri(raw["token"], f"plan {path}"),
                _spec(raw["root"], "root", False),
                [_spec(k, f"keys[{i}]", True) for i, k in enumerate(raw["keys"])],
                hashlib.sha256(text).hexdigest())
    validate(plan, f"plan {path}")
    return plan
