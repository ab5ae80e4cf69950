"""Step type ``copy``: artifacts that ship unsigned but are covered by the manifest."""

from __future__ import annotations

import shutil

from . import StepContext, StepType, register


def _copy_run(ctx: StepContext) -> dict:
    for role, path in ctx.inputs.items():
        shutil.copyfile(path, ctx.out_dir / path.name)
    return {"files": sorted(p.name for p in ctx.inputs.values())}


register(StepType("copy", False, _copy_run, None))
