"""Step types ``stm32`` (TF-A BL2 STM32 header) and ``fip`` (TF-A FIP with TBBR certificates)."""

from __future__ import annotations

from ...errors import InputError, SegwayError, VerificationError
from ...formats import stm32
from ...formats.tfa import fip
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


@register("fip")
class Fip(StepType):
    """TF-A FIP with the TBBR certificate chain BL2 checks.

    The step's key is the root-of-trust key: the FIP is signed as ``fip sign`` signs it (trusted
    key, trusted boot firmware and non-trusted firmware key and content certificates). The manifest
    records the FIP name and the certificates it holds. ``release verify`` checks the whole chain
    with the key of a trusted certificate as the root of trust.

    Inputs:
        fip: the FIP without certificates (``fip.bin``)

    Options:
        tfw_nvctr: trusted firmware non-volatile counter in the certificates (default 0)
        ntfw_nvctr: non-trusted firmware non-volatile counter in the certificates (default 0)
    """

    def run(self, ctx: StepContext) -> dict:
        fip_in = ctx.input("fip")
        signed, certs = fip.sign(fip_in.read_bytes(), ctx.key, tfw_nvctr=int(ctx.option("tfw_nvctr", 0)),
                                 ntfw_nvctr=int(ctx.option("ntfw_nvctr", 0)))
        (ctx.out_dir / fip_in.name).write_bytes(signed)
        return {"fip": fip_in.name, "certificates": sorted(certs)}

    def verify(self, ctx: VerifyContext) -> None:
        name = ctx.record["details"]["fip"]
        data = (ctx.out_dir / name).read_bytes()
        errors = []
        for cert in ctx.certs:
            try:
                fip.verify(data, rot_public_key=cert.public_key())
                return
            except SegwayError as err:
                errors.append(str(err))
        raise VerificationError(f"{name}: no trusted certificate is its root of trust "
                                f"({errors[-1] if errors else ''})")


def check_stm32_root_of_trust(release_dir, doc: dict) -> None:
    """On STM32MP1 TF-A checks the FIP against the PKH the ROM checked BL2 with: a release that carries
    both a signed STM32 image and a FIP must sign the FIP with the key of BL2's header. Otherwise it
    passes every other check but would not boot on a board fused with that PKH."""
    bl2 = [r for r in doc.get("steps", []) if r.get("type") == "stm32"]
    fips = [r for r in doc.get("steps", []) if r.get("type") == "fip"]
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
