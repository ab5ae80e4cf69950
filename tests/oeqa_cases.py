"""Run meta-segway's oeqa runtime cases against a live target outside a Yocto build.

OE-core's oeqa framework lives in poky (meta/lib/oeqa), which CI does not have. This stands in for
the three names the cases import, with the semantics they rely on:

* ``OERuntimeTestCase``: a ``unittest.TestCase`` whose ``self.target.run(cmd, timeout)`` returns
  ``(status, output)``, stdout and stderr together, as OE's SSH target does;
* ``OETestDepends``: the named tests run first, and a dependent test is skipped if one failed;
* ``OEHasPackage``: skip unless the image has one of the packages (here: a set the caller gives).

The target is what matters: the cases' commands run for real on it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path
from typing import Callable, Iterable


class _Case(unittest.TestCase):
    target = None  # set per run
    packages: set[str] = set()


def _depends(names: Iterable[str]):
    def wrap(func):
        func.oeqa_depends = list(names)
        return func
    return wrap


def _has_package(names: Iterable[str]):
    names = list(names)

    def wrap(func):
        def run(self, *args, **kwargs):
            if not any(n in self.packages for n in names):
                raise unittest.SkipTest("none of %s installed" % ", ".join(names))
            return func(self, *args, **kwargs)
        run.__name__ = func.__name__
        run.oeqa_depends = getattr(func, "oeqa_depends", [])
        return run
    return wrap


def _shim_modules() -> dict[str, types.ModuleType]:
    mods = {}
    for name in ("oeqa", "oeqa.runtime", "oeqa.runtime.case", "oeqa.runtime.decorator",
                 "oeqa.runtime.decorator.package", "oeqa.core", "oeqa.core.decorator",
                 "oeqa.core.decorator.depends"):
        mods[name] = types.ModuleType(name)
        mods[name].__path__ = []
    mods["oeqa.runtime.case"].OERuntimeTestCase = _Case
    mods["oeqa.core.decorator.depends"].OETestDepends = _depends
    mods["oeqa.runtime.decorator.package"].OEHasPackage = _has_package
    return mods


def load_case_module(path: Path) -> types.ModuleType:
    """Import a case file (its module name is the file's stem, as oeqa names it) with the stand-ins."""
    shims = _shim_modules()
    saved = {name: sys.modules.get(name) for name in shims}
    sys.modules.update(shims)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class Target:
    """``run(cmd, timeout)`` -> ``(status, output)`` through a callable running ``sh -c cmd``."""

    def __init__(self, run_shell: Callable[[str, float], tuple[int, str]]):
        self._run = run_shell

    def run(self, cmd: str, timeout: float | None = None) -> tuple[int, str]:
        return self._run(cmd, timeout or 300.0)


def run_cases(path: Path, target: Target, packages: set[str]) -> dict[str, str]:
    """Run every test of the case file in dependency order; return ``{module.Class.test: outcome}``
    with outcome "pass", "fail: ...", "error: ..." or "skip: ..."."""
    module = load_case_module(path)
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, _Case) and c is not _Case]
    tests = {}
    for cls in classes:
        for name in sorted(n for n in vars(cls) if n.startswith("test_")):
            tests["%s.%s.%s" % (path.stem, cls.__name__, name)] = (cls, name)
    outcomes: dict[str, str] = {}

    def run(test_id: str) -> str:
        if test_id in outcomes:
            return outcomes[test_id]
        cls, name = tests[test_id]
        for dep in getattr(getattr(cls, name), "oeqa_depends", []):
            if run(dep) != "pass":
                outcomes[test_id] = "skip: depends on %s" % dep
                return outcomes[test_id]
        cls.target, cls.packages = target, packages
        result = unittest.TestResult()
        cls(name).run(result)
        if result.failures:
            outcomes[test_id] = "fail: " + result.failures[0][1].strip().splitlines()[-1]
        elif result.errors:
            outcomes[test_id] = "error: " + result.errors[0][1].strip().splitlines()[-1]
        elif result.skipped:
            outcomes[test_id] = "skip: " + result.skipped[0][1]
        else:
            outcomes[test_id] = "pass"
        return outcomes[test_id]

    for test_id in tests:
        run(test_id)
    return outcomes
