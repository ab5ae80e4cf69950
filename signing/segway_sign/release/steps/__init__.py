"""The step types a plan can name: one class per type, registered by :func:`register`.

A step type turns its inputs into files in its own output directory (:meth:`StepType.run`) and
checks that directory again, offline, in ``release verify`` (:meth:`StepType.verify`). Its class
docstring is its documentation, in the form every step type follows::

    One line: what the step makes.

    Prose: what it does, what it records in the manifest, what ``release verify`` checks.

    Inputs:
        role: what the file is

    Options:
        name: what it does (default ...)

The ``Options:`` section is also the list of options the type accepts: a plan that gives a step
any other option is refused before anything runs. ``Options: none`` says the type takes none.
"""

from __future__ import annotations

from .base import REGISTRY, StepContext, StepType, VerifyContext, describe, documented_options, get, register

# Importing the step modules registers their types.
from . import ahab, copy, fit, hab, optee, tfa, verity  # noqa: F401

__all__ = ["REGISTRY", "StepContext", "StepType", "VerifyContext", "describe", "documented_options", "get",
           "register"]
