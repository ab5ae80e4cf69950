"""Step types ``stm32`` (TF-A BL2 STM32 header) and ``fip`` (TF-A FIP with TBBR certificates)."""

from __future__ import annotations

from ...errors import InputError, SegwayError
from . import StepContext, StepType, VerifyContext, format_function, register


def _public_der(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _stm32_run(ctx: StepContext) -> dict:
    sign = format_function("stm32", "sign", "stm32")
    from ...formats import stm32

    image = ctx.input("image")
    version = ctx.option("image_version")
    signed = sign(image.read_bytes(), ctx.key, image_version=None if version is None else int(version))
    checked = stm32.verify(signed)
    if _public_der(checked.public_key) != _public_der(ctx.cert.public_key()):
        raise InputError(f"step '{ctx.step.id}': the signed header does not carry the certificate's key")
    (ctx.out_dir / image.name).write_bytes(signed)
    return {"image": image.name, "header": checked.header_version, "pkh": checked.pkh.hex()}


def _stm32_verify(ctx: VerifyContext) -> None:
    from ...errors import VerificationError
    from ...formats import stm32

    name = ctx.record["details"]["image"]
    checked = stm32.verify((ctx.out_dir / name).read_bytes())
    if not any(_public_der(checked.public_key) == _public_der(c.public_key()) for c in ctx.certs):
        raise VerificationError(f"{name} is signed by a key none of the trusted certificates holds")


register(StepType("stm32", True, _stm32_run, _stm32_verify, frozenset({"image_version"})))


# --- fip: TF-A FIP with the TBBR certificate chain BL2 checks ----------------------------------------

def _fip_run(ctx: StepContext) -> dict:
    sign = format_function("fip", "sign", "fip")
    fip_in = ctx.input("fip")
    signed, certs = sign(fip_in.read_bytes(), ctx.key, tfw_nvctr=int(ctx.option("tfw_nvctr", 0)),
                         ntfw_nvctr=int(ctx.option("ntfw_nvctr", 0)))
    (ctx.out_dir / fip_in.name).write_bytes(signed)
    return {"fip": fip_in.name, "certificates": sorted(certs)}


def _fip_verify(ctx: VerifyContext) -> None:
    from ...errors import VerificationError
    from ...formats import fip

    name = ctx.record["details"]["fip"]
    data = (ctx.out_dir / name).read_bytes()
    errors = []
    for cert in ctx.certs:
        try:
            fip.verify(data, rot_public_key=cert.public_key())
            return
        except SegwayError as err:
            errors.append(str(err))
    raise VerificationError(f"{name}: no trusted certificate is its root of trust ({errors[-1] if errors else ''})")


register(StepType("fip", True, _fip_run, _fip_verify, frozenset({"tfw_nvctr", "ntfw_nvctr"})))
