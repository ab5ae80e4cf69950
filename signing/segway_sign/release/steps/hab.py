"""Step type ``hab``."""

from __future__ import annotations

from ...errors import InputError, VerificationError
from ...formats.hab import image as hab
from ...formats.hab import srk as hab_srk
from ...reproducible import source_datetime
from .base import StepContext, StepType, VerifyContext, register, check_srk_index, srk_index


@register("hab")
class Hab(StepType):
    """i.MX 6/7/8M boot image (i.MX 8M: imx-boot, SPL + U-Boot FIT) with HABv4 CSFs.

    The step's key is the CSF key (or, without ``img_key``, the SRK key itself: fast
    authentication). The SRK table is read from the certificates directory and shipped in the
    step's directory, so that ``release verify`` and engineers can check the fuse value; the
    manifest records the image, the SoC, the table, its SRK hash (the fuse value) and the signed
    parts. ``release verify`` checks that the table hashes to the recorded fuse value, that the
    recorded parts are the layout's (or the plan's ``parts``), and every CSF against the table.

    Inputs:
        image: the unsigned boot image (imx-boot / flash.bin)

    Options:
        soc: ``imx8m`` (default), ``imx7`` or ``imx6``: the image layout
        srk_index: the SRK (1-4, as ``hab sign --srk-index``) that issued the CSF and IMG
            certificates (default 1)
        srk_table: the SRK table's file name in the certificates directory
            (default ``hab-srk-table.bin``)
        img_key: the plan key that signs the image data (default: none, fast authentication
            with the step's key as the SRK)
        parts: the parts to sign, a list or ``spl,fit`` (default: every part of the layout)
    """

    def check_options(self, step) -> None:
        check_srk_index(step)

    def run(self, ctx: StepContext) -> dict:
        image = ctx.input("image")
        table_name = ctx.option("srk_table", "hab-srk-table.bin")
        try:
            table = (ctx.certs_dir / table_name).read_bytes()
        except OSError as e:
            raise InputError(f"step '{ctx.step.id}': cannot read SRK table {table_name} in the certificates "
                             f"directory: {e.strerror}") from None
        img_key_name = ctx.option("img_key")
        if img_key_name:
            img_key, img_cert = ctx.named_key(img_key_name)
            keys = hab.HabKeys(table, srk_index(ctx.step.options), ctx.key, ctx.cert, img_key, img_cert)
        else:  # fast authentication: the plan key is the SRK key itself
            keys = hab.HabKeys(table, srk_index(ctx.step.options), ctx.key, ctx.cert, nocak=True)
        soc = ctx.option("soc", "imx8m")
        # Every part of the SoC's layout (i.MX 8M: SPL and FIT) unless the plan names the parts.
        parts = hab.parse_parts(soc, ctx.option("parts"))
        signed = hab.sign_image(image.read_bytes(), soc, keys, signing_time=source_datetime(), parts=parts)
        (ctx.out_dir / image.name).write_bytes(signed.image)
        # The SRK table is public; shipping it lets `release verify` and engineers check the fuse value.
        (ctx.out_dir / table_name).write_bytes(table)
        return {"image": image.name, "soc": soc, "srk_table": table_name,
                "srk_hash": hab_srk.srk_hash(table).hex(), "parts": [p.name for p in signed.parts]}

    def verify(self, ctx: VerifyContext) -> None:
        d = ctx.record["details"]
        table = (ctx.out_dir / d["srk_table"]).read_bytes()
        if hab_srk.srk_hash(table).hex() != d["srk_hash"]:
            raise VerificationError(f"{d['srk_table']} does not hash to the SRK fuse value in the manifest")
        # The parts the layout expects, as when signing: all of them unless the plan named some.
        parts = hab.parse_parts(d["soc"], (ctx.record.get("options") or {}).get("parts"))
        if list(d.get("parts", ())) != list(parts):
            raise VerificationError(f"step '{ctx.step_id}': the manifest lists the signed parts "
                                    f"{', '.join(d.get('parts', ())) or 'none'}, but the {d['soc']} layout has "
                                    f"{', '.join(parts)}")
        hab.verify_image((ctx.out_dir / d["image"]).read_bytes(), d["soc"], table, parts=parts,
                         srk_hash=bytes.fromhex(d["srk_hash"]))
