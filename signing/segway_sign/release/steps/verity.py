"""Step type ``verity``: dm-verity tree, root hash and its PKCS#7 for a rootfs image."""

from __future__ import annotations

import hashlib
import shutil

from ...errors import InputError
from . import StepContext, StepType, VerifyContext, register


def _verity_run(ctx: StepContext) -> dict:
    from ...formats import verity

    image = ctx.input("image")
    salt_opt = str(ctx.option("salt", "derived"))
    hash_alg = ctx.option("hash", "sha256")
    digest_size = hashlib.new(hash_alg).digest_size if hash_alg in verity.HASH_ALGORITHMS else 32
    if salt_opt == "derived":
        salt = verity.derived_salt(bytes.fromhex(ctx.input_sha256["image"]), digest_size)
    else:
        salt = verity.parse_salt(salt_opt, digest_size)
    superblock = bool(ctx.option("superblock", True))
    params = verity.VerityParams(
        salt=salt,
        data_block_size=int(ctx.option("data_block", 4096)),
        hash_block_size=int(ctx.option("hash_block", 4096)),
        hash_algorithm=hash_alg,
        superblock=superblock,
        uuid=verity.uuid_from_salt(salt) if superblock else None,
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
    res = verity.sign_image(image, ctx.out_dir, ctx.key, ctx.cert, params,
                            appended=layout == "appended", progress=progress,
                            name=ctx.option("name"))
    if layout == "separate":
        # The release carries the rootfs too, so it can be flashed and checked on its own.
        shutil.copyfile(image, ctx.out_dir / res.files["image"])
    return {"root_hash": res.tree.root_hex, "salt": params.salt.hex(), "layout": layout,
            "env": res.files["env"], "data_blocks": res.tree.layout.data_blocks}


def _verity_verify(ctx: VerifyContext) -> None:
    from ...formats import verity

    res = verity.verify_dir(ctx.out_dir, ctx.certs)
    if res.tree.root_hex != ctx.record["details"]["root_hash"]:
        raise InputError(f"step '{ctx.step_id}': root hash differs from the manifest")


register(StepType("verity", True, _verity_run, _verity_verify,
                  frozenset({"layout", "salt", "data_block", "hash_block", "hash", "superblock", "name"})))
