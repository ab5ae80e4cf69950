"""The step registry: one entry per step type a plan can name (one module per type below).

A step type turns its inputs into files in its own output directory and can check that directory
offline. Format modules are imported only when a step of their type runs, so a plan may name a type
whose format module lands later (it fails with a one-line error saying what is missing).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography import x509

from ...errors import InputError, UsageError
from ..plan import Step


@dataclass
class StepContext:
    """What a running step may use; paths are resolved by the runner."""

    step: Step
    out_dir: Path  # this step's directory inside the release (exists, empty)
    inputs: dict[str, Path]  # role -> file (deploy dir or an earlier step's output)
    input_sha256: dict[str, str]  # role -> hex digest
    key: Any  # cryptography private key, or None for key-less steps
    cert: x509.Certificate | None
    progress: Callable[[str, int, int], None] | None = None  # (label, done, total)
    named_key: Callable[[str], tuple[Any, x509.Certificate]] | None = None  # another plan key by name
    certs_dir: Path | None = None

    def option(self, name: str, default=None):
        return self.step.options.get(name, default)

    def input(self, role: str) -> Path:
        try:
            return self.inputs[role]
        except KeyError:
            raise InputError(f"step '{self.step.id}' needs input '{role}'") from None


@dataclass
class VerifyContext:
    step_id: str
    out_dir: Path
    record: dict  # the step's manifest entry
    certs: list[x509.Certificate]


@dataclass(frozen=True)
class StepType:
    name: str
    needs_key: bool
    run: Callable[[StepContext], dict]
    verify: Callable[[VerifyContext], None] | None
    options: frozenset[str] = frozenset()


REGISTRY: dict[str, StepType] = {}


def register(step_type: StepType) -> StepType:
    REGISTRY[step_type.name] = step_type
    return step_type


def get(name: str) -> StepType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown step type '{name}'") from None


def format_function(module: str, function: str, step_type: str):
    """Import ``segway_sign.formats.<module>.<function>`` or say which part is missing."""
    try:
        mod = importlib.import_module(f"segway_sign.formats.{module}")
    except ImportError:
        raise UsageError(f"step type '{step_type}' needs segway_sign.formats.{module}, "
                         "which this segway-sign does not have") from None
    fn = getattr(mod, function, None)
    if fn is None:
        raise UsageError(f"step type '{step_type}' needs {function}() in segway_sign.formats.{module}")
    return fn


# Importing the step modules registers their types.
from . import copy, fit, hab, pending, tfa, verity  # noqa: E402,F401
