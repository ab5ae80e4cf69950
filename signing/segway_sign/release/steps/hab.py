"""Step type ``hab``: i.MX 8M imx-boot (SPL + U-Boot FIT) with HABv4 CSFs."""

from __future__ import annotations


from ...errors import InputError
from ...reproducible import source_datetime
from . import StepContext, StepType, VerifyContext, format_function, register


def _hab_run(ctx: StepContext) -> dict:
    sign_image = format_function("hab", "sign_image", "hab")
    from ...formats import hab, hab_srk

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
        keys = hab.HabKeys(table, int(ctx.option("srk_index", 0)), ctx.key, ctx.cert, img_key, img_cert)
    else:  # fast authentication: the plan key is the SRK key itself
        keys = hab.HabKeys(table, int(ctx.option("srk_index", 0)), ctx.key, ctx.cert, nocak=True)
    soc = ctx.option("soc", "imx8m")
    # Every part of the SoC's layout (i.MX 8M: SPL and FIT) unless the plan names the parts.
    parts = hab.parse_parts(soc, ctx.option("parts"))
    signed = sign_image(image.read_bytes(), soc, keys, signing_time=source_datetime(), parts=parts)
    (ctx.out_dir / image.name).write_bytes(signed.image)
    # The SRK table is public; shipping it lets `release verify` and engineers check the fuse value.
    (ctx.out_dir / table_name).write_bytes(table)
    return {"image": image.name, "soc": soc, "srk_table": table_name,
            "srk_hash": hab_srk.srk_hash(table).hex(), "parts": [p.name for p in signed.parts]}


def _hab_verify(ctx: VerifyContext) -> None:
    from ...errors import VerificationError
    from ...formats import hab, hab_srk

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


register(StepType("hab", True, _hab_run, _hab_verify,
                  frozenset({"soc", "srk_index", "srk_table", "img_key", "parts"})))
