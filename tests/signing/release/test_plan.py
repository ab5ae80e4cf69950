"""Signing plans: validation errors name the problem; steps come out in dependency order."""

from __future__ import annotations

from pathlib import Path

import pytest

from segway_sign.errors import InputError
from segway_sign.release import steps
from segway_sign.release.plan import load_plan

from release_fixtures import plan_doc, write_plan

REPO = Path(__file__).resolve().parents[3]
URIS = {"verity": "pkcs11:token=t;object=v", "release": "pkcs11:token=t;object=r"}


@pytest.mark.parametrize("plan", sorted((REPO / "conf" / "signing").glob("*.yaml")), ids=lambda p: p.stem)
def test_machine_plans_load_in_order(plan):
    loaded = load_plan(plan, set(steps.REGISTRY))
    order = [s.id for s in loaded.steps]
    assert order[0] == "rootfs-verity" and order.index("kernel-fit") > 0
    for i, step in enumerate(loaded.steps):
        assert step.depends_on() <= set(order[:i])
    assert loaded.machine == plan.stem
    assert {"verity", "fit", "release"} <= set(loaded.keys)


def test_order_follows_step_references_and_after(tmp_path):
    doc = plan_doc(URIS, [
        {"id": "late", "type": "copy", "after": ["middle"], "inputs": {"x": "a"}},
        {"id": "middle", "type": "copy", "inputs": {"env": "step:rootfs-verity/verity.env"}},
    ])
    doc["steps"].insert(0, doc["steps"].pop())  # put "middle" first in the file
    order = [s.id for s in load_plan(write_plan(tmp_path / "p.yaml", doc)).steps]
    assert order.index("rootfs-verity") < order.index("middle") < order.index("late")


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(version=2), "'version' must be 1"),
    (lambda d: d.pop("machine"), "missing 'machine'"),
    (lambda d: d.update(manifest_key="nope"), "manifest_key 'nope' is not among the keys"),
    (lambda d: d["keys"]["verity"].update(uri="pkcs11:token=t;object=v;pin-value=1234"), "carries a PIN"),
    (lambda d: d["keys"]["verity"].update(uri="file:///k.pem"), "RFC 7512"),
    (lambda d: d["steps"].append(dict(d["steps"][0])), "duplicate id"),
    (lambda d: d["steps"][1].update(type="zip"), "unknown type 'zip'"),
    (lambda d: d["steps"][1].update(key="other"), "key 'other' is not among the keys"),
    (lambda d: d["steps"][1].update(inputs={"image": "../etc/passwd"}), "relative path inside the deploy dir"),
    (lambda d: d["steps"][1].update(after=["ghost"]), "depends on unknown step 'ghost'"),
    (lambda d: d["steps"][1].update(colour="red"), "unknown field(s) colour"),
    (lambda d: (d["steps"][0].update(after=["rootfs-verity"]), d["steps"][1].update(after=["disk"])),
     "dependency cycle"),
])
def test_invalid_plans_are_one_line_errors(tmp_path, mutate, message):
    doc = plan_doc(URIS)
    mutate(doc)
    with pytest.raises(InputError) as err:
        load_plan(write_plan(tmp_path / "p.yaml", doc), set(steps.REGISTRY))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_and_malformed_plan_files(tmp_path):
    with pytest.raises(InputError, match="cannot read plan"):
        load_plan(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("version: 1\nkeys: [\n")
    with pytest.raises(InputError, match="not valid YAML at line"):
        load_plan(tmp_path / "bad.yaml")
