"""Daemon configuration: a YAML file, validated into plain dataclasses."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from segway_kms.errors import ConfigError

ROLES = ("user", "operator", "admin")
MAX_VALIDITY_DAYS = 36500  # certificate lifetimes: 100 years at most, so that dates stay well before 9999


@dataclasses.dataclass
class UnixListener:
    path: str
    group: str            # the socket's group; clients connecting through it act as "group:<group>"
    mode: int = 0o660


@dataclasses.dataclass
class TcpListener:
    address: str          # host:port; port 0 picks a free one
    server_name: str = "localhost"


@dataclasses.dataclass
class Profile:
    name: str
    ekus: list[str]
    san_patterns: list[str]
    max_days: int
    key_types: list[str]
    client_auth_only: bool = False


@dataclasses.dataclass
class Config:
    profile: str                        # "development" or "release"
    state_dir: Path
    backend: dict
    unix: list[UnixListener]
    tcp: TcpListener | None
    principals: dict[str, dict[str, str]]   # principal -> {tenant or "*": role}
    cert_profiles: dict[str, Profile]
    max_request_bytes: int = 64 * 1024
    workers: int = 16
    crl_days: int = 7
    health_interval: float = 5.0


# Every key the configuration may carry, by where it sits; anything else is a mistake (a typo would otherwise
# silently fall back to a default, e.g. an unanchored audit log or a wide-open listener).
TOP_KEYS = ("profile", "state_dir", "backend", "listen", "principals", "cert_profiles", "max_request_bytes",
            "workers", "crl_days", "health_interval")
BACKEND_KEYS = {"tpm": ("type", "tcti", "srk_handle", "audit_anchor_index", "flush_transient"),
                "pkcs11": ("type", "module", "token_label", "token_serial", "pin_file", "pin_env"),
                "software": ("type",)}
LISTEN_KEYS = ("unix", "tcp")
UNIX_KEYS = ("path", "group", "mode")
TCP_KEYS = ("address", "server_name")
PROFILE_KEYS = ("ekus", "san_patterns", "max_days", "key_types")


def _known(mapping, allowed: tuple[str, ...], where: str) -> None:
    """Refuse a key that is not in ``allowed`` (``where`` names the mapping, e.g. "listen.tcp")."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key in mapping:
        if key not in allowed:
            place = f" in {where}" if where != "config" else ""
            raise ConfigError(f"unknown key '{key}'{place} (known: {', '.join(allowed)})")


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise ConfigError(f"{where}: missing '{key}'")
    return mapping[key]


def parse(data: dict, base: Path | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a mapping")
    _known(data, TOP_KEYS, "config")
    profile = data.get("profile", "development")
    if profile not in ("development", "release"):
        raise ConfigError(f"profile must be 'development' or 'release', not {profile!r}")
    state_dir = Path(_require(data, "state_dir", "config"))
    if base is not None and not state_dir.is_absolute():
        state_dir = base / state_dir
    backend = _require(data, "backend", "config")
    if not isinstance(backend, dict) or backend.get("type") not in ("tpm", "pkcs11", "software"):
        raise ConfigError("backend.type must be one of tpm, pkcs11, software")
    _known(backend, BACKEND_KEYS[backend["type"]], f"backend (type {backend['type']})")
    listen = data.get("listen") or {}
    _known(listen, LISTEN_KEYS, "listen")
    for u in listen.get("unix") or []:
        _known(u, UNIX_KEYS, "listen.unix")
    if listen.get("tcp"):
        _known(listen["tcp"], TCP_KEYS, "listen.tcp")
    unix = [UnixListener(path=_require(u, "path", "listen.unix"), group=str(_require(u, "group", "listen.unix")),
                         mode=int(str(u.get("mode", "660")), 8)) for u in listen.get("unix", [])]
    tcp = None
    if listen.get("tcp"):
        t = listen["tcp"]
        tcp = TcpListener(address=_require(t, "address", "listen.tcp"), server_name=t.get("server_name", "localhost"))
    if not unix and tcp is None:
        raise ConfigError("listen: configure at least one unix socket or a tcp address")
    principals = {}
    for name, roles in (data.get("principals") or {}).items():
        if not isinstance(roles, dict):
            raise ConfigError(f"principals.{name}: expected a mapping tenant -> role")
        for tenant, role in roles.items():
            if role not in ROLES:
                raise ConfigError(f"principals.{name}.{tenant}: unknown role {role!r}")
        principals[str(name)] = {str(k): str(v) for k, v in roles.items()}
    profiles = {}
    for name, p in (data.get("cert_profiles") or {}).items():
        _known(p, PROFILE_KEYS, f"cert_profiles.{name}")
        profiles[name] = Profile(name=name, ekus=list(p.get("ekus", [])), san_patterns=list(p.get("san_patterns", [])),
                                 max_days=int(p.get("max_days", 365)),
                                 key_types=list(p.get("key_types", ["EC_P256", "EC_P384", "RSA_2048", "RSA_3072"])))
        if not 1 <= profiles[name].max_days <= MAX_VALIDITY_DAYS:
            raise ConfigError(f"cert_profiles.{name}.max_days must be 1 to {MAX_VALIDITY_DAYS}")
    crl_days = int(data.get("crl_days", 7))
    if not 1 <= crl_days <= 3650:
        raise ConfigError("crl_days must be 1 to 3650")
    return Config(profile=profile, state_dir=state_dir, backend=backend, unix=unix, tcp=tcp, principals=principals,
                  cert_profiles=profiles, max_request_bytes=int(data.get("max_request_bytes", 64 * 1024)),
                  workers=int(data.get("workers", 16)), crl_days=crl_days,
                  health_interval=float(data.get("health_interval", 5.0)))


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc.__class__.__name__})") from None
    try:
        return parse(data, base=path.parent)
    except ConfigError as exc:
        if str(exc).startswith("unknown key"):
            raise ConfigError(f"{path}: {exc}") from None
        raise
    except (TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid configuration ({exc})") from None
