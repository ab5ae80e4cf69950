"""Key backends behind one interface (base.Backend): TPM 2.0, PKCS#11, and software for development."""
from __future__ import annotations

from pathlib import Path

from segway_kms.errors import ConfigError


def open_backend(cfg: dict, state_dir: Path, release: bool):
    kind = cfg.get("type")
    if kind == "tpm":
        from segway_kms.backends.tpm import TpmBackend
        return TpmBackend(cfg)
    if kind == "pkcs11":
        from segway_kms.backends.pkcs11 import Pkcs11Backend
        return Pkcs11Backend(cfg)
    if kind == "software":
        from segway_kms.backends.soft import SoftwareBackend
        return SoftwareBackend(Path(state_dir) / "software-keys", release=release)
    raise ConfigError(f"unknown backend type {kind!r}")
