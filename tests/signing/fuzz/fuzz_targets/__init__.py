"""Every command that parses an input, as fuzz targets: one module per format, each with a
``TARGETS`` list (see base.py for what a target declares). A new format (RAUC bundles)
joins by adding its module here."""

from __future__ import annotations

from . import ahab, fip, fit, hab, optee, pki, release, stm32, verity

TARGETS = [t for module in (fit, stm32, hab, ahab, fip, verity, optee, release, pki) for t in module.TARGETS]
