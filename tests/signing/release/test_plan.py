"""Signing plans: validation errors name the problem; steps come out in dependency order."""

from __future__ import annotations

from pathlib import Path

import pytest

from segway_sign.errors import InputError
from segway_sign.release import steps
from segway_sign.release.plan import load_plan

from tests.signing.release.release_fixtures import plan_doc, write_plan

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


VALID = "version: 1\nmachine: m\nkeys: {r: {uri: 'pkcs11:token=t;object=r', cert: r.pem}}\nmanifest_key: r\n"


@pytest.mark.parametrize("text,message", [
    ("a: " + "[" * 100_000 + "]" * 100_000, "nested more than 32 levels"),  # past Python's recursion limit
    (VALID + "steps: [{id: a, type: copy, options: {x: " + "[" * 40 + "]" * 40 + "}}]\n", "nested more than 32"),
    ("".join("  " * i + "a:\n" for i in range(2000)), "nested more than 32 levels"),
    ("a: &a [*a]\n", "nested more than 32 levels"),  # an alias cycle
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdef", "bcdefg")), "more than 100000 values"),  # 10^7 values once expanded
    (VALID + "steps: [{id: a, type: copy, options: {when: 2026-13-01}}]\n", "not valid YAML (month must be"),
    (VALID + "steps: [{id: a, type: copy, options: {when: !!timestamp soon}}]\n", "not valid YAML"),
    (VALID + "steps: [{id: a, type: copy, options: {when: 2026-01-01}}]\n", "a date value"),
    (VALID + "steps: [{id: a, type: copy, options: {b: !!binary aGk=}}]\n", "a bytes value"),
    (VALID + "steps: [{id: a, type: copy, options: {1: x, y: z}}]\n", "'options' must be a mapping from option"),
    (VALID + "steps: [{id: a, type: copy, key: {r: 1}}]\n", "is not among the keys"),
    (VALID + "steps: [{id: a, type: copy, after: [{x: 1}]}]\n", "'after' must be a list of step ids"),
    (VALID + "steps: [{id: a, type: copy, inputs: {1: disk.wic}}]\n", "'inputs' must map roles"),
    (VALID + "steps: [{id: a, type: copy, 1: x, colour: red}]\n", "unknown field(s) 1, colour"),
    (b"version: 1\nmachine: \xff\xfe\n", "not valid YAML"),
])
def test_hostile_yaml_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as err:
        load_plan(path, set(steps.REGISTRY))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_release_refuses_a_deeply_nested_plan_with_one_line(tmp_path):
    from tests.helpers import one_line_error, run_cli

    (tmp_path / "p.yaml").write_text("version: 1\nmachine: " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "deploy").mkdir()
    one_line_error(run_cli(["release", "--plan", str(tmp_path / "p.yaml"), "--deploy-dir", str(tmp_path / "deploy"),
                            "--out", str(tmp_path / "rel")], timeout=60), 1, "nested more than 32 levels")
