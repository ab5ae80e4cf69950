"""Step type ``verity``, and the check that a FIT carries exactly a verity step's env."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import libfdt

from ...errors import InputError, VerificationError
from ...formats.verity import sign as verity_sign
from ...formats.verity import tree as verity_tree
from .. import fitprep
from ..initramfs import ends_with_archive
from .base import StepContext, StepType, VerifyContext, register


@register("verity")
class Verity(StepType):
    """dm-verity hash tree, root hash and its PKCS#7 signature for a rootfs image.

    The step writes what ``verity sign`` writes into its directory: the tree (in its own file, or
    appended to a copy of the image), the root hash, its detached PKCS#7 signature by the step's
    key (the form the kernel's ``dm-verity.require_signatures`` checks) and ``verity.env``, the
    parameters the initramfs passes to veritysetup; with the separate layout, the image too. The
    manifest records the root hash, salt, layout, env file name and data block count.
    ``release verify`` runs ``verity verify`` on the directory (every byte of ``verity.env``, the
    signature with the trusted certificates, the whole tree) and compares the parameters with the
    plan's options and the recorded details.

    Inputs:
        image: the filesystem image (a multiple of the data block size)

    Options:
        layout: ``separate`` (default; tree in its own file) or ``appended`` (tree after the
            data, in one file, as the wic partitions hold it)
        salt: ``derived`` (default; from the image's sha256, so that signing a build again gives the
            same tree) or the salt in hex
        data_block: data block size in bytes (default 4096)
        hash_block: hash block size in bytes (default 4096)
        hash: hash algorithm, ``sha256`` (default) or ``sha512``
        superblock: write a veritysetup superblock (default true; its UUID derives from the salt)
        name: base name of the output files (default: from the image's name)
    """

    def run(self, ctx: StepContext) -> dict:
        image = ctx.input("image")
        salt_opt = str(ctx.option("salt", "derived"))
        hash_alg = ctx.option("hash", "sha256")
        digest_size = hashlib.new(hash_alg).digest_size if hash_alg in verity_tree.HASH_ALGORITHMS else 32
        if salt_opt == "derived":
            salt = verity_tree.derived_salt(bytes.fromhex(ctx.input_sha256["image"]), digest_size)
        else:
            salt = verity_tree.parse_salt(salt_opt, digest_size)
        superblock = bool(ctx.option("superblock", True))
        params = verity_tree.VerityParams(
            salt=salt,
            data_block_size=int(ctx.option("data_block", 4096)),
            hash_block_size=int(ctx.option("hash_block", 4096)),
            hash_algorithm=hash_alg,
            superblock=superblock,
            uuid=verity_tree.uuid_from_salt(salt) if superblock else None,
        )
        layout = ctx.option("layout", "separate")
        if layout not in ("separate", "appended"):
            raise InputError(f"step '{ctx.step.id}': layout must be 'separate' or 'appended'")
        total = image.stat().st_size
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            if ctx.progress:
                ctx.progress(f"{ctx.step.id}: hashing {image.name}", done[0], total)

        # sign_image creates its directory atomically; the step directory itself is that directory.
        ctx.out_dir.rmdir()
        res = verity_sign.sign_image(image, ctx.out_dir, ctx.key, ctx.cert, params,
                                     appended=layout == "appended", progress=progress,
                                     name=ctx.option("name"), digest_image=True, durable=False)
        # The appended image, hashed beside its tree. Its pages are on their way to the disk while the
        # next steps run; the release's output directory flushes every file before the release is named.
        ctx.output_sha256.update(res.sha256)
        if layout == "separate":
            # The release carries the rootfs too, so it can be flashed and checked on its own.
            shutil.copyfile(image, ctx.out_dir / res.files["image"])
        return {"root_hash": res.tree.root_hex, "salt": params.salt.hex(), "layout": layout,
                "env": res.files["env"], "data_blocks": res.tree.layout.data_blocks}

    def verify(self, ctx: VerifyContext) -> None:
        """``verity verify`` on the step directory (every byte of verity.env, the signature, the tree), then
        the parameters against the plan options and results the signed manifest records."""
        res = verity_sign.verify_dir(ctx.out_dir, ctx.certs)
        details, options = ctx.record["details"], ctx.record.get("options", {})
        p = res.tree.params
        recorded = [
            ("root hash", res.tree.root_hex, details["root_hash"]),
            ("salt", p.salt.hex(), details["salt"]),
            ("layout", res.layout_kind, details["layout"]),
            ("layout", res.layout_kind, options.get("layout", "separate")),
            ("env file", res.files["env"], details["env"]),
            ("data block count", res.tree.layout.data_blocks, details["data_blocks"]),
            ("data block size", p.data_block_size, options.get("data_block", 4096)),
            ("hash block size", p.hash_block_size, options.get("hash_block", 4096)),
            ("hash algorithm", p.hash_algorithm, options.get("hash", "sha256")),
            ("superblock", p.superblock, bool(options.get("superblock", True))),
        ]
        for what, found, expected in recorded:
            if str(found) != str(expected):
                raise InputError(f"step '{ctx.step_id}': {what} differs from the manifest")


def check_carried_envs(release_dir: Path, doc: dict) -> None:
    """Every step that put a verity env into a FIT put exactly the files a verity step here checked.

    ``release verify`` runs this after each step's own check: the fit step's check covers the FIT
    signature and the root hash; this covers every other byte the initramfs reads — verity.env,
    roothash and roothash.p7s — by comparing them with the verity step's files, which
    :func:`segway_sign.formats.verity.sign.verify_dir` checked against the tree.
    """
    records = {r.get("id"): r for r in doc.get("steps", []) if isinstance(r, dict)}
    for sid, record in records.items():
        details = record.get("details") or {}
        where = details.get("verity_env_in")
        if not where:
            continue
        source = str((record.get("inputs") or {}).get("verity_env", ""))
        ref_id, _, ref_file = source.removeprefix("step:").partition("/")
        ref = records.get(ref_id)
        if not source.startswith("step:") or ref is None or ref.get("type") != "verity" \
                or ref_file != (ref.get("details") or {}).get("env"):
            raise VerificationError(f"step '{sid}': its verity env {source!r} is not the env of a verity step "
                                    "of this release, so nothing checked it")
        vdir = release_dir / ref_id
        env_raw = (vdir / ref_file).read_bytes()
        env = verity_sign.parse_env(env_raw, str(vdir / ref_file))
        if hashlib.sha256(env_raw).hexdigest() != (record.get("input_sha256") or {}).get("verity_env") \
                or env["VERITY_ROOT_HASH"] != details.get("verity_root_hash"):
            raise VerificationError(f"step '{sid}': the manifest records another verity env than step '{ref_id}'s")
        fit_path = release_dir / sid / str(details.get("fit"))
        in_dir = fitprep.VERITY_DIR_IN_INITRAMFS
        try:
            fit = fit_path.read_bytes()
            fdt = libfdt.Fdt(fit)
            if where == "initramfs":
                # The same files, in the same order, as the fit step appends.
                files = {fitprep.ENV_PATH_IN_INITRAMFS: env_raw,
                         f"{in_dir}/roothash": (vdir / env["VERITY_ROOT_HASH_FILE"]).read_bytes(),
                         f"{in_dir}/roothash.p7s": (vdir / env["VERITY_ROOT_HASH_SIG"]).read_bytes()}
                ramdisks = fitprep.ramdisk_images(fdt)
                ok = len(ramdisks) == 1 and ends_with_archive(
                    bytes(fdt.getprop(fdt.path_offset(f"/images/{ramdisks[0]}"), "data")), files)
            elif where == "property":
                confs = [fdt.path_offset(f"/configurations/{c}") for c in fitprep.configurations(fit)]
                ok = bool(confs) and all(
                    fdt.getprop(c, "segway,verity-env").as_str() == env_raw.decode()
                    and fdt.getprop(c, "segway,verity-roothash").as_str() == env["VERITY_ROOT_HASH"]
                    for c in confs)
            else:
                raise VerificationError(f"step '{sid}': verity_env_in {where!r} is neither initramfs nor property")
        except libfdt.FdtException as e:
            raise VerificationError(f"step '{sid}': {fit_path.name}: {e}") from None
        except OSError as e:
            raise InputError(f"cannot read {e.filename}: {e.strerror}") from None
        if not ok:
            raise VerificationError(f"step '{sid}': {fit_path.name} does not carry exactly the verity.env, roothash "
                                    f"and roothash.p7s of step '{ref_id}' ({where})")
