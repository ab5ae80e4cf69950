"""Step types whose release runner is not written yet: registered so plans can name them."""

from __future__ import annotations

from ...errors import UsageError
from . import StepContext, StepType, format_function, register


def _pending(type_name: str, module: str, function: str) -> StepType:
    def run(ctx: StepContext) -> dict:
        format_function(module, function, type_name)
        raise UsageError(f"step type '{type_name}' is registered but not wired to "
                         f"segway_sign.formats.{module}.{function}() yet")
    return StepType(type_name, True, run, None)


for _name, _module, _function in (
    ("ahab", "ahab", "sign_ahab"),
):
    register(_pending(_name, _module, _function))
