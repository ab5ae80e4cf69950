"""release verify and the verity env: a release whose manifest signer blessed a tampered verity.env, or
a FIT (validly signed) that carries another env than the verity step's, is refused."""

from __future__ import annotations

import json

import pytest

from tests.signing.release.release_fixtures import make_deploy, plan_doc, write_plan
from segway_dev import fitbuild
from segway_sign.errors import SegwayError
from segway_sign.formats.fit import sign as fit_format
from segway_sign.release import fitprep, steps
from segway_sign.release import manifest as mf
from segway_sign.release.initramfs import append_files, ends_with_archive
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.verify import verify_release


def release(tmp_path, file_keys, where: str | None = None):
    deploy = make_deploy(tmp_path)
    doc = plan_doc({k: file_keys.uris[k] for k in ("verity", "release", "fit")})
    if where:
        fitbuild.build_tiny_fit(deploy / "fitImage", arch="arm64")
        (deploy / "fitImage.its").unlink()
        doc["steps"].append({"id": "kernel-fit", "type": "fit", "key": "fit",
                             "inputs": {"fit": "fitImage", "verity_env": "step:rootfs-verity/verity.env"},
                             "options": {"verity_env_in": where, "key_name_hint": "dev"}})
    plan = load_plan(write_plan(tmp_path / "plan.yaml", doc), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", file_keys.open_key, file_keys.certs)
    return tmp_path / "rel", deploy


def resign(rel, file_keys, edit=None) -> None:
    """What a holder of the manifest key could do: rehash every output, edit, and sign again."""
    doc = json.loads((rel / mf.MANIFEST).read_text())
    for name in doc["outputs"]:
        doc["outputs"][name] = mf.sha256_file(rel / name)
    if edit:
        edit(doc)
    raw = mf.encode(doc)
    (rel / mf.MANIFEST).write_bytes(raw)
    key = file_keys.keys[file_keys.uris["release"]]
    cert = load_certs_dir(file_keys.certs)
    signer = next(c for c in cert if "release" in c.subject.rfc4514_string())
    (rel / mf.SIGNATURE).write_bytes(mf.sign(raw, key, signer))


def ignore_corruption(env: str) -> str:
    table = next(line for line in env.splitlines() if line.startswith("VERITY_TABLE="))
    return env.replace(table, table + " 1 ignore_corruption")


def test_resigned_release_with_a_tampered_env_is_refused(tmp_path, file_keys):
    rel, _ = release(tmp_path, file_keys)
    certs = load_certs_dir(file_keys.certs)
    verify_release(rel, certs)
    env = rel / "rootfs-verity" / "verity.env"
    env.write_text(ignore_corruption(env.read_text()))
    resign(rel, file_keys)
    with pytest.raises(SegwayError) as err:
        verify_release(rel, certs)
    assert "adds optional arguments '1 ignore_corruption'" in str(err.value)
    assert "\n" not in str(err.value)


def test_plan_options_in_the_manifest_must_match_the_tree(tmp_path, file_keys):
    rel, _ = release(tmp_path, file_keys)
    resign(rel, file_keys, lambda doc: doc["steps"][1]["options"].update(hash_block=1024))
    with pytest.raises(SegwayError, match="hash block size differs from the manifest"):
        verify_release(rel, load_certs_dir(file_keys.certs))


@pytest.mark.parametrize("where", ["initramfs", "property"])
def test_fit_carrying_another_env_is_refused(tmp_path, file_keys, where):
    """The FIT is validly signed and carries the right root hash, but its env adds ignore_corruption."""
    rel, deploy = release(tmp_path, file_keys, where)
    certs = load_certs_dir(file_keys.certs)
    verify_release(rel, certs)
    vdir = rel / "rootfs-verity"
    evil_env = ignore_corruption((vdir / "verity.env").read_text())
    unsigned = (deploy / "fitImage").read_bytes()
    if where == "initramfs":
        extra = {f"{fitprep.VERITY_DIR_IN_INITRAMFS}/roothash": (vdir / "rootfs.roothash").read_bytes(),
                 f"{fitprep.VERITY_DIR_IN_INITRAMFS}/roothash.p7s": (vdir / "rootfs.roothash.p7s").read_bytes()}
        fit = fitprep.add_env_to_initramfs(unsigned, evil_env, extra)
    else:
        fit = fitprep.add_env_property(unsigned, evil_env, (vdir / "rootfs.roothash").read_text())
    fit_key = file_keys.keys[file_keys.uris["fit"]]
    (rel / "kernel-fit" / "fitImage").write_bytes(fit_format.sign_fit(fit, fit_key, key_name_hint="dev").blob)
    resign(rel, file_keys)
    with pytest.raises(SegwayError, match="does not carry exactly the verity.env, roothash and roothash.p7s"):
        verify_release(rel, certs)


def test_fit_env_from_outside_the_release_is_refused(tmp_path, file_keys):
    rel, _ = release(tmp_path, file_keys, "initramfs")
    resign(rel, file_keys, lambda doc: doc["steps"][2]["inputs"].update(verity_env="verity.env"))
    with pytest.raises(SegwayError, match="is not the env of a verity step of this release"):
        verify_release(rel, load_certs_dir(file_keys.certs))


def test_ends_with_archive_takes_any_mtime_and_nothing_else():
    files = {"usr/share/segway/verity/verity.env": b"VERITY_ENV_FORMAT=2\n", "usr/share/segway/verity/roothash": b"ab"}
    base = b"\x1f\x8b" + b"x" * 29
    for mtime in (0, 1767225600):
        from segway_sign.release.initramfs import newc_archive

        blob = base + b"\0" * (-len(base) % 4) + newc_archive(files, mtime)
        assert ends_with_archive(blob, files)
    blob = append_files(base, files)
    assert ends_with_archive(blob, files)
    assert not ends_with_archive(blob + b"\0" * 4, files)
    assert not ends_with_archive(blob, dict(files, **{"usr/share/segway/verity/roothash": b"ac"}))
    assert not ends_with_archive(blob, {k: files[k] for k in reversed(list(files))})
    assert not ends_with_archive(blob[:-1], files)
