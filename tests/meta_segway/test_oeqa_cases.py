"""The oeqa runtime cases compile, define the checks the image promises, and use only the target
API that OE-core's OERuntimeTestCase offers (self.target.run)."""
from __future__ import annotations

import ast

import pytest

from .layer import LAYER

CASES = LAYER / "lib" / "oeqa" / "runtime" / "cases"
EXPECTED = {
    "segway_tee": {"test_tee_supplicant_running", "test_tpmrm0_present", "test_tpm2_getrandom"},
    "segway_kms": {"test_kms_health", "test_kms_sign_round_trip"},
    "segway_hardening": {"test_root_account_locked", "test_sshd_policy", "test_sysctls_in_force",
                         "test_root_read_only_from_verity"},
}


def tree(name):
    return ast.parse((CASES / ("%s.py" % name)).read_text(), filename=name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_case_defines_tests(name):
    module = tree(name)
    classes = [n for n in module.body if isinstance(n, ast.ClassDef)]
    assert classes and all(any(getattr(b, "id", None) == "OERuntimeTestCase" for b in c.bases) for c in classes)
    methods = {f.name for c in classes for f in c.body if isinstance(f, ast.FunctionDef)}
    assert EXPECTED[name] <= methods


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dependencies_name_existing_tests(name):
    """OETestDepends entries are "module.Class.method" of a test that exists."""
    known = {"%s.%s.%s" % (n, c.name, f.name) for n in EXPECTED for c in tree(n).body if isinstance(c, ast.ClassDef)
             for f in c.body if isinstance(f, ast.FunctionDef)}
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "OETestDepends":
            for dep in node.args[0].elts:
                assert dep.value in known, dep.value


def test_sysctl_case_matches_the_shipped_file():
    """Every sysctl the runtime case checks is set to that value by segway-hardening."""
    shipped = {}
    for line in (LAYER / "recipes-security/segway-hardening/files/90-segway.conf").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            shipped[key] = value
    module = tree("segway_hardening")
    expected = next(ast.literal_eval(n.value) for n in module.body
                    if isinstance(n, ast.Assign) and n.targets[0].id == "EXPECTED_SYSCTLS")
    for key, value in expected.items():
        assert shipped.get(key) == value, key
