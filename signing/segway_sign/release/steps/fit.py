"""Step type ``fit``: the kernel FIT, signed after the verity env is put inside it."""

from __future__ import annotations

from ...errors import InputError, UsageError
from . import StepContext, StepType, VerifyContext, format_function, register


def _fit_run(ctx: StepContext) -> dict:
    from .. import fitprep

    sign_fit = format_function("fit", "sign_fit", "fit")
    fit = ctx.input("fit").read_bytes()
    where = ctx.option("verity_env_in", "initramfs" if "verity_env" in ctx.inputs else None)
    details: dict = {"verity_env_in": where}
    if where is not None:
        from ...formats import verity

        env_text = ctx.input("verity_env").read_text()
        root = verity.parse_env(env_text).get("VERITY_ROOT_HASH", "")
        if not root:
            raise InputError(f"step '{ctx.step.id}': the verity env has no VERITY_ROOT_HASH")
        env = verity.parse_env(env_text)
        env_dir = ctx.input("verity_env").parent
        extra = {}
        for key, name in (("VERITY_ROOT_HASH_FILE", "roothash"), ("VERITY_ROOT_HASH_SIG", "roothash.p7s")):
            if env.get(key) and (env_dir / env[key]).is_file():
                extra[f"{fitprep.VERITY_DIR_IN_INITRAMFS}/{name}"] = (env_dir / env[key]).read_bytes()
        if where == "initramfs":
            fit = fitprep.add_env_to_initramfs(fit, env_text, extra)
        elif where == "property":
            fit = fitprep.add_env_property(fit, env_text, root)
        else:
            raise InputError(f"step '{ctx.step.id}': verity_env_in must be 'initramfs' or 'property'")
        details["verity_root_hash"] = root
    signed = _call_sign_fit(sign_fit, fit, ctx)
    name = ctx.option("name", ctx.input("fit").name)
    (ctx.out_dir / name).write_bytes(signed)
    details["fit"] = name
    return details


_FIT_OPTIONS = {"key_name_hint": "key_name_hint", "algo": "algo", "padding": "padding_name",
                "configs": "configs", "image_signatures": "image_signatures", "comment": "comment"}


def _call_sign_fit(sign_fit, fit: bytes, ctx: StepContext) -> bytes:
    """segway_sign.formats.fit.sign_fit with the plan's options; it verifies before returning."""
    kwargs = {_FIT_OPTIONS[k]: v for k, v in ctx.step.options.items() if k in _FIT_OPTIONS}
    if ctx.progress:
        label = f"{ctx.step.id}: hashing FIT images"
        kwargs["progress"] = lambda done, total: ctx.progress(label, done, total)
    return bytes(sign_fit(fit, ctx.key, **kwargs).blob)


def _fit_verify(ctx: VerifyContext) -> None:
    """U-Boot's check, with a control DTB holding the trusted certificate's key, then the env."""
    import libfdt

    from .. import fitprep
    from ...errors import VerificationError
    from ...formats import fit_keys, fit_tree, fit_verify, verity

    name = ctx.record["details"]["fit"]
    fit = (ctx.out_dir / name).read_bytes()
    fdt = fit_tree.open_fdt(fit)
    confs = fit_tree.subnodes(fdt, fit_tree.CONFIGS)
    hints = set()
    for conf in confs:
        for sig in fit_tree.subnodes(fdt, f"{fit_tree.CONFIGS}/{conf}"):
            if sig.startswith("signature"):
                hints.add(fit_tree.getstr(fdt, f"{fit_tree.CONFIGS}/{conf}/{sig}", "key-name-hint"))
    if not hints:
        raise VerificationError(f"{name} has no configuration signature")
    errors = []
    for cert in ctx.certs:
        control = bytes(libfdt.Fdt.create_empty_tree(4096).as_bytearray())
        try:
            for hint in sorted(h for h in hints if h):
                control = fit_keys.add_pubkey(control, cert.public_key(), hint, required="conf")
            for conf in confs:
                fit_verify.verify_fit(fit, control, conf)
            break
        except (VerificationError, InputError, UsageError) as err:
            errors.append(str(err))
    else:
        raise VerificationError(f"{name}: no trusted certificate verifies it ({errors[-1] if errors else ''})")
    root = ctx.record["details"].get("verity_root_hash")
    if root:
        if ctx.record["details"]["verity_env_in"] == "initramfs":
            env = fitprep.read_initramfs_env(fit)
            envs = [env] if env else []
        else:
            envs = list(fitprep.read_property_env(fit).values())
        if not envs or any(verity.parse_env(e).get("VERITY_ROOT_HASH") != root for e in envs):
            raise VerificationError(f"{name} does not carry verity root hash {root}")


register(StepType("fit", True, _fit_run, _fit_verify,
                  frozenset({"verity_env_in", "name", *_FIT_OPTIONS})))
