"""Step types ``stm32`` (TF-A BL2 STM32 header) and ``fip`` (TF-A FIP with TBBR certificates: STM32MP1's
chain of trust or TF-A's generic one)."""

from __future__ import annotations

import hashlib

from ...errors import InputError, SegwayError, VerificationError
from ...formats.stm32 import header as stm32
from ...formats.tfa import fip, tbbr
from ...crypto import spki_der
from .base import StepContext, StepType, VerifyContext, register


@register("stm32")
class Stm32(StepType):
    """TF-A BL2 (or any STM32MP1 image) with a signed STM32 header.

    The image is signed as ``stm32 sign`` signs it, and the signed header must carry the public key
    of the step's certificate. The manifest records the image name, the header version and the
    public key hash (PKH, the OTP fuse value). ``release verify`` checks the header signature and
    that its key is the key of a trusted certificate.

    Inputs:
        image: the STM32 image with an unsigned header (``tf-a-*.stm32``)

    Options:
        image_version: the header's image version (anti-rollback; default: the input's)
    """

    def run(self, ctx: StepContext) -> dict:
        image = ctx.input("image")
        version = ctx.option("image_version")
        signed = stm32.sign(image.read_bytes(), ctx.key, image_version=None if version is None else int(version))
        checked = stm32.verify(signed)
        if spki_der(checked.public_key) != spki_der(ctx.cert.public_key()):
            raise InputError(f"step '{ctx.step.id}': the signed header does not carry the certificate's key")
        (ctx.out_dir / image.name).write_bytes(signed)
        return {"image": image.name, "header": checked.header_version, "pkh": checked.pkh.hex()}

    def verify(self, ctx: VerifyContext) -> None:
        name = ctx.record["details"]["image"]
        checked = stm32.verify((ctx.out_dir / name).read_bytes())
        if not any(spki_der(checked.public_key) == spki_der(c.public_key()) for c in ctx.certs):
            raise VerificationError(f"{name} is signed by a key none of the trusted certificates holds")


# Options of the generic chain naming a plan key for each role below the ROT key.
KEY_OPTIONS = {f"{opt.replace('-', '_')}": role for role, opt in tbbr.KEY_OPTIONS.items() if role != "rot"}


@register("fip")
class Fip(StepType):
    """TF-A FIP with the TBBR certificate chain BL1/BL2 check.

    The step's key is the root-of-trust key: the FIP is signed as ``fip sign`` signs it. With
    ``cot: stm32mp1`` (the default) that is STM32MP1's chain (trusted key, config, trusted OS and
    non-trusted firmware key and content certificates; the keys below the ROT key are made fresh
    for each signing). With ``cot: generic`` it is TF-A's generic TBBR chain (PLAT=qemu, i.MX8M):
    BL2, trusted key, SoC (BL31), trusted OS (BL32) and non-trusted firmware (BL33) key and content
    certificates, with every key from the plan (the five key options). The manifest records the
    FIP name, the chain, the certificates it holds and, for the generic chain, the ROTPK hash BL1
    and BL2 are built with. ``release verify`` checks the whole chain with the key of a trusted
    certificate as the root of trust; for the generic chain every key the chain carries must also
    be the key of a trusted certificate, and the ROTPK hash the recorded one.

    Inputs:
        fip: the FIP without certificates (``fip.bin``)

    Options:
        cot: ``stm32mp1`` (default) or ``generic``
        trusted_world_key: generic: the plan key of the trusted world (signs the BL31 and BL32 key
            certificates)
        non_trusted_world_key: generic: the plan key of the non-trusted world (signs the BL33 key
            certificate)
        soc_fw_key: generic: the plan key of the BL31 content certificate
        tos_fw_key: generic: the plan key of the BL32 (OP-TEE) content certificate
        nt_fw_key: generic: the plan key of the BL33 content certificate
        tfw_nvctr: trusted firmware non-volatile counter in the certificates (default 0)
        ntfw_nvctr: non-trusted firmware non-volatile counter in the certificates (default 0)
    """

    def check_options(self, step) -> None:
        cot = step.options.get("cot", "stm32mp1")
        if cot not in tbbr.CHAINS:
            raise InputError(f"step '{step.id}': option cot must be one of {', '.join(tbbr.CHAINS)}, not {cot!r}")
        chain = tbbr.chain(cot)
        needed = {o for o, role in KEY_OPTIONS.items() if role in chain.roles and role not in chain.ephemeral_roles}
        given = {o for o in KEY_OPTIONS if o in step.options}
        if needed - given:
            raise InputError(f"step '{step.id}': the {cot} chain needs option(s) {', '.join(sorted(needed - given))}")
        if given - needed:
            raise InputError(f"step '{step.id}': the {cot} chain takes no option(s) {', '.join(sorted(given - needed))}"
                             + (" (its keys below the ROT key are made fresh for each signing)"
                                if chain.ephemeral_roles else ""))

    def run(self, ctx: StepContext) -> dict:
        cot = ctx.option("cot", "stm32mp1")
        keys = {role: ctx.named_key(ctx.option(opt))[0] for opt, role in KEY_OPTIONS.items() if ctx.option(opt)}
        fip_in = ctx.input("fip")
        signed, certs = fip.sign(fip_in.read_bytes(), ctx.key, cot=cot, keys=keys,
                                 tfw_nvctr=int(ctx.option("tfw_nvctr", 0)), ntfw_nvctr=int(ctx.option("ntfw_nvctr", 0)))
        report = fip.verify(signed, cot=cot, rot_public_key=ctx.key.public_key())
        if cot != "stm32mp1" and report["unauthenticated"]:
            raise InputError(f"step '{ctx.step.id}': {fip_in.name} holds {', '.join(report['unauthenticated'])}, "
                             "which the chain of trust does not cover")
        (ctx.out_dir / fip_in.name).write_bytes(signed)
        details = {"fip": fip_in.name, "certificates": sorted(certs)}
        if cot != "stm32mp1":  # (records of STM32MP1 FIPs keep their earlier shape)
            details.update(cot=cot, rotpk_hash=report["rot_pkh"])
        return details

    def verify(self, ctx: VerifyContext) -> None:
        details = ctx.record["details"]
        name, cot = details["fip"], details.get("cot", "stm32mp1")
        data = (ctx.out_dir / name).read_bytes()
        report = ctx.first_trusted(lambda cert: fip.verify(data, cot=cot, rot_public_key=cert.public_key()),
                                   f"{name}: no trusted certificate is its root of trust")
        if cot == "stm32mp1":
            return
        if report["rot_pkh"] != details.get("rotpk_hash"):
            raise VerificationError(f"{name}: ROTPK hash {report['rot_pkh']} is not the one the manifest records")
        trusted = {hashlib.sha256(spki_der(c.public_key())).hexdigest() for c in ctx.certs}
        for role, digest in report["keys"].items():
            if digest not in trusted:
                raise VerificationError(f"{name}: its {role.replace('_', '-')} key is the key of no trusted "
                                        "certificate")
        if report["unauthenticated"]:
            raise VerificationError(f"{name}: {', '.join(report['unauthenticated'])} not covered by the chain "
                                    "of trust")


def check_stm32_root_of_trust(release_dir, doc: dict) -> None:
    """On STM32MP1 TF-A checks the FIP against the PKH the ROM checked BL2 with: a release that carries
    both a signed STM32 image and a FIP must sign the FIP with the key of BL2's header. Otherwise it
    passes every other check but would not boot on a board fused with that PKH."""
    bl2 = [r for r in doc.get("steps", []) if r.get("type") == "stm32"]
    fips = [r for r in doc.get("steps", []) if r.get("type") == "fip"
            and r.get("details", {}).get("cot", "stm32mp1") == "stm32mp1"]
    if not bl2 or not fips:
        return
    keys = {}
    for record in bl2:
        name = record["details"]["image"]
        checked = stm32.verify((release_dir / record["id"] / name).read_bytes())
        keys[f"{record['id']}/{name}"] = checked.public_key
    for record in fips:
        name = record["details"]["fip"]
        data = (release_dir / record["id"] / name).read_bytes()
        for where, public_key in keys.items():
            try:
                fip.verify(data, rot_public_key=public_key)
            except SegwayError:
                raise VerificationError(
                    f"step '{record['id']}': {name} is not signed with the root-of-trust key of {where} (the "
                    "STM32MP1 ROM and TF-A check BL2 and the FIP against the same PKH: one key signs both)"
                ) from None
