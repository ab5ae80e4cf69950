"""Signed release directories and signing plans: ``release verify`` on a release made from the
release tests' deploy dir and plan (token keys), ``release`` on mutated plans."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.signing.fuzz.mutator import der_length_fields

from .base import Input, Shop, Target, all_bytes


def _fixtures():
    from tests.signing.release import release_fixtures
    return release_fixtures


def _release_inputs(shop: Shop) -> dict:
    """The deploy dir, the certificates and the plan (keys in the token), shared by both targets."""
    def make(where: Path):
        fx = _fixtures()
        uris, certs = shop.token_certs()
        deploy = fx.make_deploy(where)
        plan = fx.write_plan(where / "plan.yaml", fx.plan_doc(uris))
        return {"certs": certs, "deploy": deploy, "plan": plan}
    return shop.once("release-inputs", make)


def _build_release(shop: Shop, case: Path) -> None:
    src = _release_inputs(shop)
    shop.cli(["release", "--plan", str(src["plan"]), "--deploy-dir", str(src["deploy"]), "--out",
              str(case / "release"), "--certs", str(src["certs"]), *shop.pin])
    shutil.copytree(src["certs"], case / "certs")


def _verify_argv(shop: Shop, case: Path) -> list[str]:
    return ["release", "verify", "--certs", str(case / "certs"), str(case / "release")]


# Device bytes: a release is what is flashed or installed, file by file, after its manifest's
# signature is checked; the tool that does it parses manifest.json and its CMS signature whole.
# Every byte of every file counts.
RELEASE = (
    Input("release/manifest.json", all_bytes, text="json", weight=4),
    Input("release/manifest.json.p7s", all_bytes, fields=der_length_fields, weight=4),
    Input("release/rootfs-verity/verity.env", all_bytes, text="env", weight=2),
    Input("release/rootfs-verity/rootfs.roothash.p7s", all_bytes, fields=der_length_fields, weight=1),
    Input("release/rootfs-verity/rootfs.roothash", all_bytes, weight=1),
    Input("release/rootfs-verity/rootfs.hashtree", all_bytes, weight=1),
    Input("release/rootfs-verity/rootfs.ext4", all_bytes, weight=1),
    Input("release/disk/disk.wic.bmap", all_bytes, text="xml", weight=1),
    Input("release/disk/disk.wic", all_bytes, weight=1),
    # the trusted certificates: a trust anchor, not part of the release
    Input("certs/release.pem", None, text="pem", weight=1),
)


def _build_plan(shop: Shop, case: Path) -> None:
    src = _release_inputs(shop)
    shutil.copy(src["plan"], case / "plan.yaml")
    shutil.copytree(src["certs"], case / "certs")
    shutil.copytree(src["deploy"], case / "deploy")


def _plan_argv(shop: Shop, case: Path) -> list[str]:
    return ["release", "--plan", str(case / "plan.yaml"), "--deploy-dir", str(case / "deploy"), "--out",
            str(case / "out"), "--certs", str(case / "certs"), "--no-progress", "--json", *shop.pin]


TARGETS = [
    Target("release verify", RELEASE, _build_release, _verify_argv),
    # A plan is the operator's instruction, not a signed artifact: what it asks for is signed.
    Target("release (plan)", (Input("plan.yaml", None, text="yaml"),), _build_plan, _plan_argv, token=True),
]
