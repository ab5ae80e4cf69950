"""A verified release and its artifacts, looked up by the ids of the plan's steps.

The release is verified (``release verify`` against trusted certificates) before anything is read.
Which step holds what is the board's business (:mod:`.boards`); this module only finds files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..formats import fwu_metadata as fwu
from ..release.certs import load_certs_dir
from ..release.verify import verify_release

# Step types whose output a ROM or earlier stage authenticates; anything else is unsigned.
SIGNED_BOOT_TYPES = {"stm32", "fip", "hab", "ahab"}


@dataclass
class Release:
    """A verified release: its directory, manifest and steps by id."""

    path: Path
    manifest: dict
    steps: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, certs_dir: Path) -> "Release":
        res = verify_release(path, load_certs_dir(certs_dir))
        return cls(Path(path), res.manifest, {s["id"]: s for s in res.manifest["steps"]})

    def files(self, step_id: str) -> list[Path]:
        step = self.steps.get(step_id)
        if step is None:
            return []
        return [self.path / rel for rel in sorted(step["outputs"])]

    def one(self, step_id: str, *suffixes: str) -> Path:
        found = [p for p in self.files(step_id) if p.name.endswith(suffixes)]
        if len(found) != 1:
            have = ", ".join(p.name for p in self.files(step_id)) or "nothing"
            raise InputError(f"release step '{step_id}' should hold one {'/'.join(suffixes)} file (has {have})")
        return found[0]

    def boot_artifact(self, step_id: str, suffixes: tuple[str, ...], allow_unsigned: bool) -> Path:
        """A first-stage image; refused unless a signing step made it (or ``allow_unsigned``)."""
        step = self.steps.get(step_id)
        if step is None:
            raise InputError(f"the release has no '{step_id}' step")
        if step["type"] not in SIGNED_BOOT_TYPES and not allow_unsigned:
            raise InputError(f"release step '{step_id}' is of type {step['type']}, not a signed boot image "
                             "(--allow-unsigned-boot for an open development board)")
        # A signing step that ships more than the image (hab: its SRK table) names the image.
        image = (step.get("details") or {}).get("image")
        if image is not None:
            path = self.path / step_id / image
            if path not in self.files(step_id):
                raise InputError(f"release step '{step_id}' names image {image}, which is not among its outputs")
            return path
        return self.one(step_id, *suffixes)

    def verity(self, step_id: str) -> tuple[Path, Path | None]:
        """(rootfs image, hash tree or None for the appended layout)."""
        details = self.steps.get(step_id, {}).get("details")
        if not details:
            raise InputError(f"the release has no '{step_id}' step")
        if details["layout"] == "appended":
            return self.one(step_id, ".verity.img"), None
        image = [p for p in self.files(step_id)
                 if not p.name.endswith((".hashtree", ".roothash", ".p7s", ".env"))]
        if len(image) != 1:
            raise InputError(f"release step '{step_id}' should hold exactly one rootfs image")
        return image[0], self.one(step_id, ".hashtree")

    def fit(self, step_id: str) -> Path:
        return self.path / step_id / self.steps[step_id]["details"]["fit"]

    def fwu_metadata(self, step_id: str) -> tuple[Path, fwu.FwuMetadata]:
        """TF-A's FWU metadata: the file and what it says (one image, the FIP, in two banks)."""
        if step_id not in self.steps:
            raise InputError(f"the release has no '{step_id}' step: TF-A with firmware update "
                             "(meta-st-stm32mp's 'fw-update') boots only from a disk with metadata1/metadata2")
        path = self.one(step_id, ".bin")
        return path, fwu.parse(path.read_bytes())

    def wic(self, step_id: str) -> Path:
        return self.one(step_id, ".wic")
