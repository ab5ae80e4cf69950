"""Step type ``copy``."""

from __future__ import annotations

import shutil

from .base import StepContext, StepType, VerifyContext, register


@register("copy")
class Copy(StepType):
    """Artifacts that ship unsigned but are covered by the manifest (a disk image and its bmap, …).

    Each input is copied, under its own file name, into the step's directory. The manifest records
    the names (``details.files``) and, like every output, each file's sha256; ``release verify``
    checks those hashes and has nothing else to check. Takes no key.

    Inputs:
        any role: a file to ship (the role names only the input; the file keeps its name)

    Options: none
    """

    needs_key = False

    def run(self, ctx: StepContext) -> dict:
        for path in ctx.inputs.values():
            shutil.copyfile(path, ctx.out_dir / path.name)
        return {"files": sorted(p.name for p in ctx.inputs.values())}

    def verify(self, ctx: VerifyContext) -> None:
        """Nothing beyond the manifest's sha256 of each file, which release verify has checked."""
