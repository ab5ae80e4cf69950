"""Step type ``fit``."""

from __future__ import annotations

import libfdt

from ...errors import InputError, UsageError, VerificationError
from ...formats.verity import sign as verity_sign
from ...formats.fit import keys as fit_keys
from ...formats.fit import sign as fit_format
from ...formats.fit import tree as fit_tree
from ...formats.fit import verify as fit_verify
from .. import fitprep
from .base import StepContext, StepType, VerifyContext, register

# Plan option -> keyword of segway_sign.formats.fit.sign.sign_fit.
_SIGN_FIT_KWARGS = {"key_name_hint": "key_name_hint", "algo": "algo", "padding": "padding_name",
                    "configs": "configs", "image_signatures": "image_signatures", "comment": "comment"}


@register("fit")
class Fit(StepType):
    """The kernel FIT, signed after the verity env is put inside it.

    When the step has a ``verity_env`` input (the ``verity.env`` of a verity step), the env, the
    root hash and its PKCS#7 go into the FIT first (see ``verity_env_in``), so that the FIT
    signature covers them. The FIT is then signed as ``fit sign`` signs it (U-Boot's
    ``required = "conf"`` configuration signatures) and checked before it is written. The manifest
    records the file name and, with an env, the root hash and where the env is.

    ``release verify`` checks every configuration as U-Boot does, with a control DTB holding the
    key of a trusted certificate, that the FIT carries the recorded root hash, and (with the verity
    step's check) that the env, root hash and PKCS#7 inside are exactly the verity step's files.

    Inputs:
        fit: the unsigned FIT (kernel, device trees, initramfs)
        verity_env: optional, ``step:<verity step>/verity.env``

    Options:
        verity_env_in: ``initramfs`` (default with a verity_env input): appended to the
            initramfs as ``usr/share/segway/verity/verity.env``, ``roothash`` and ``roothash.p7s``;
            ``property``: the env and root hash as properties of every configuration node
        name: file name of the signed FIT (default: the input's)
        key_name_hint: ``key-name-hint`` of the signature nodes the step adds (default: the key's label)
        algo: signature algorithm, e.g. ``sha256,rsa2048`` (default: from the key)
        padding: ``pkcs-1.5`` or ``pss``, RSA padding of the signature nodes the step adds
        configs: configurations to sign (default: those with signature nodes, or all)
        image_signatures: also sign each image, adding signature nodes where missing (default: false)
        comment: comment stored in the signature nodes
    """

    def run(self, ctx: StepContext) -> dict:
        fit = ctx.input("fit").read_bytes()
        where = ctx.option("verity_env_in", "initramfs" if "verity_env" in ctx.inputs else None)
        details: dict = {"verity_env_in": where}
        if where is not None:
            env_text = ctx.input("verity_env").read_text()
            root = verity_sign.parse_env(env_text).get("VERITY_ROOT_HASH", "")
            if not root:
                raise InputError(f"step '{ctx.step.id}': the verity env has no VERITY_ROOT_HASH")
            env = verity_sign.parse_env(env_text)
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
        signed = self._sign(fit, ctx)
        name = ctx.option("name", ctx.input("fit").name)
        (ctx.out_dir / name).write_bytes(signed)
        details["fit"] = name
        return details

    @staticmethod
    def _sign(fit: bytes, ctx: StepContext) -> bytes:
        """segway_sign.formats.fit.sign.sign_fit with the plan's options; it verifies before returning."""
        kwargs = {_SIGN_FIT_KWARGS[k]: v for k, v in ctx.step.options.items() if k in _SIGN_FIT_KWARGS}
        if ctx.progress:
            label = f"{ctx.step.id}: hashing FIT images"
            kwargs["progress"] = lambda done, total: ctx.progress(label, done, total)
        return bytes(fit_format.sign_fit(fit, ctx.key, **kwargs).blob)

    def verify(self, ctx: VerifyContext) -> None:
        """U-Boot's check, with a control DTB holding the trusted certificate's key, then the env."""
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

        def check(cert) -> None:
            control = bytes(libfdt.Fdt.create_empty_tree(4096).as_bytearray())
            for hint in sorted(h for h in hints if h):
                control = fit_keys.add_pubkey(control, cert.public_key(), hint, required="conf")
            for conf in confs:
                fit_verify.verify_fit(fit, control, conf)

        ctx.first_trusted(check, f"{name}: no trusted certificate verifies it",
                          catch=(VerificationError, InputError, UsageError))
        root = ctx.record["details"].get("verity_root_hash")
        if root:
            if ctx.record["details"]["verity_env_in"] == "initramfs":
                env = fitprep.read_initramfs_env(fit)
                envs = [env] if env else []
            else:
                envs = list(fitprep.read_property_env(fit).values())
            if not envs or any(verity_sign.parse_env(e).get("VERITY_ROOT_HASH") != root for e in envs):
                raise VerificationError(f"{name} does not carry verity root hash {root}")
