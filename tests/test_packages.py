"""The tests share their helpers through the tests package: every directory of test modules is a
package (pytest imports tests.signing.release.test_plan by its dotted name, so two test files may
share a basename), and no test module edits sys.path to reach another one's helpers."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SYS_PATH_EDIT = re.compile(r"\bsys\.path\.(insert|append|extend)\b|\bsys\.path\s*(\+=|=|\[)")


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_directory_of_test_modules_is_a_package():
    missing = sorted({str(p.parent.relative_to(TESTS.parent)) for p in _modules()
                      if not (p.parent / "__init__.py").exists()})
    assert not missing, f"add an __init__.py to: {', '.join(missing)}"


def test_no_module_edits_sys_path():
    edits = [f"{p.relative_to(TESTS.parent)}:{n}" for p in _modules()
             for n, line in enumerate(p.read_text().splitlines(), 1) if SYS_PATH_EDIT.search(line)]
    assert not edits, "import helpers as tests.<module> instead: " + ", ".join(edits)
