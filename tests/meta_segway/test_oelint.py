"""oelint-adv finds nothing in meta-segway's recipes and appends, apart from the rules listed with a
reason in oelint-suppressions.txt."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .layer import LAYER, metadata_files

SUPPRESSIONS = Path(__file__).parent / "oelint-suppressions.txt"


def suppressed_rules():
    rules = {}
    for line in SUPPRESSIONS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rule, _, reason = line.partition(" ")
            rules[rule] = reason.strip()
    return rules


def run_oelint(extra=()):
    files = [str(p) for p in metadata_files((".bb", ".bbappend"))]
    cmd = [sys.executable, "-m", "oelint_adv", "--quiet", "--release", "scarthgap", *extra, *files]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=LAYER)


def test_every_suppression_has_a_reason():
    rules = suppressed_rules()
    assert rules
    for rule, reason in rules.items():
        assert rule.startswith("oelint."), rule
        assert len(reason) > 20, "%s needs a reason" % rule


def test_oelint_clean():
    extra = []
    for rule in suppressed_rules():
        extra += ["--suppress", rule]
    proc = run_oelint(extra)
    findings = [line for line in (proc.stdout + proc.stderr).splitlines() if ":" in line and "oelint." in line]
    assert findings == [], "\n".join(findings)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_oelint_sees_the_layer():
    """Without suppressions oelint-adv reports the suppressed rules, so it really read the files."""
    proc = run_oelint()
    assert "oelint.vars.mispell.unknown" in proc.stdout + proc.stderr
