"""Step types are classes registered by a decorator; each documents its inputs and options in its docstring,
and the options it documents are the ones a plan may give it."""

from __future__ import annotations

import inspect

import pytest

from segway_sign.release import steps
from segway_sign.release.steps import StepContext, StepType, VerifyContext, documented_options, register


def test_every_type_is_a_documented_class():
    assert set(steps.REGISTRY) == {"ahab", "copy", "fip", "fit", "hab", "optee-ta", "stm32", "verity"}
    for name, stype in steps.REGISTRY.items():
        cls = type(stype)
        assert isinstance(stype, StepType) and cls.name == name
        doc = inspect.cleandoc(cls.__doc__)
        assert "\nInputs:\n" in doc and ("\nOptions:\n" in doc or "\nOptions: none" in doc), name
        assert stype.options == documented_options(cls)
        assert all(f"\n    {option}: " in doc for option in stype.options), name
        # Nothing is registered that does not run and check: no stubs.
        assert cls.run is not StepType.run and cls.verify is not StepType.verify, name


def test_documented_options_are_the_accepted_ones():
    assert steps.get("verity").options == {"layout", "salt", "data_block", "hash_block", "hash", "superblock", "name"}
    assert steps.get("hab").options == {"soc", "srk_index", "srk_table", "img_key", "parts"}
    assert steps.get("fit").options == {"verity_env_in", "name", "key_name_hint", "algo", "padding", "configs",
                                        "image_signatures", "comment"}
    assert steps.get("copy").options == frozenset()


def test_register_refuses_undocumented_and_unwritten_types():
    class NoOptions(StepType):
        """Makes nothing.

        Inputs:
            image: an image
        """

        def run(self, ctx: StepContext) -> dict:
            return {}

        def verify(self, ctx: VerifyContext) -> None:
            pass

    with pytest.raises(TypeError, match="no 'Options:' section"):
        register("test-no-options")(NoOptions)

    class Unwritten(StepType):
        """Makes nothing.

        Options: none
        """

        def run(self, ctx: StepContext) -> dict:
            return {}

    with pytest.raises(TypeError, match="abstract"):
        register("test-unwritten")(Unwritten)
    with pytest.raises(TypeError, match="registered twice"):
        register("copy")(NoOptions)
    assert "test-no-options" not in steps.REGISTRY and "test-unwritten" not in steps.REGISTRY
    assert type(steps.get("copy")).__name__ == "Copy"


def test_docs_hold_every_step_type_docstring():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[3] / "docs" / "release.md").read_text()
    assert steps.describe() in page, "docs/release.md: paste steps.describe() under 'Step types'"
