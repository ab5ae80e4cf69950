"""Step type ``ahab``."""

from __future__ import annotations

from ...errors import InputError, VerificationError
from ...formats import ahab
from ...crypto import spki_der
from .base import StepContext, StepType, VerifyContext, register, check_srk_index, srk_index

DEFAULT_TABLE = "ahab-srk-table.bin"


def _int(options: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = options.get(name, default)
    if value is None:
        return None
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 0)
    except ValueError:
        number = None
    if number is None or not lo <= number <= hi:
        raise InputError(f"option {name} must be a number from {lo} to {hi}, not {value!r}")
    return number


def _offsets(options: dict) -> list[int] | None:
    value = options.get("container_offsets")
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise InputError("option container_offsets must be a list of byte offsets")
    return [_int({"container_offsets": v}, "container_offsets", None, 0, 0xFFFFFFFF) for v in items]


def _permissions(options: dict) -> int:
    value = options.get("sgk_permissions", ["container"])
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError("option sgk_permissions must be a list of permission names")
    return ahab.permission_bits([n.strip() for n in names if n.strip()])


def _uuid(options: dict) -> bytes | None:
    value = options.get("sgk_uuid")
    if value is None:
        return None
    try:
        raw = bytes.fromhex(str(value).replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != ahab.UUID_SIZE:
        raise InputError(f"option sgk_uuid must be {ahab.UUID_SIZE} bytes of hex, not {value!r}")
    return raw


def _fuse_hash(soc) -> str:
    if soc not in ahab.DEFAULT_FUSE_HASH:
        raise InputError(f"option soc must be one of {', '.join(sorted(ahab.DEFAULT_FUSE_HASH))}, not {soc!r}")
    return ahab.DEFAULT_FUSE_HASH[soc]


@register("ahab")
class Ahab(StepType):
    """i.MX 8QXP/8QM/8ULP/93 boot image with signed AHAB containers.

    The containers are signed as ``ahab sign`` signs them: by the step's key, which must be the SRK
    ``srk_index`` of the SRK table, or, with ``sgk_key``, by that key under an AHAB certificate the
    SRK key signs. The SRK table is read from the certificates directory and shipped in the step's
    directory beside the image. The manifest records the image, the SoC, the table, its SRK hash
    (the fuse value, SHA-512 for 8QXP/8QM and SHA-256 for 8ULP/93), the signed containers' offsets
    and whether an SGK signed them.

    ``release verify`` checks that the table hashes to the recorded fuse value, that the recorded
    containers are those the plan asked for (every container not signed by NXP unless the plan
    names offsets), each of them in full (``ahab verify``: signature, SGK certificate, image
    hashes, every header byte) against the table, signed by the plan's SRK (and SGK, revocation
    mask, SGK permissions and UUID when the plan gives them), and that this SRK is the key of a
    trusted certificate.

    Inputs:
        image: the image with unsigned AHAB containers (flash.bin, as imx-mkimage or spsdk make it)

    Options:
        srk_index: the SRK (1-4, as ``ahab sign --srk-index``) whose private key is the step's key
            (default 1)
        srk_table: the SRK table's file name in the certificates directory (``ahab srk --out-table``;
            default ``ahab-srk-table.bin``)
        soc: ``imx93`` (default), ``imx8ulp``, ``imx8qxp`` or ``imx8qm``: the SRK hash algorithm of
            the fuse value the manifest records
        sgk_key: a plan key that signs the containers as an SGK, under a certificate the SRK signs
            (same key type as the SRK; the table must have the CA flag) (default: the SRK signs)
        sgk_permissions: the SGK certificate's permissions, a list of names (default: [container])
        sgk_uuid: binds the SGK certificate to one device: its 128-bit UUID, 32 hex digits
        container_offsets: the containers to sign, a list of byte offsets (default: every container
            not signed by NXP)
        revoke_mask: SRK revocation mask (0-15) written into the container flags (default: left as is)
    """

    def check_options(self, step) -> None:
        check_srk_index(step)

    def run(self, ctx: StepContext) -> dict:
        options = ctx.step.options
        image = ctx.input("image")
        table_name = ctx.option("srk_table", DEFAULT_TABLE)
        try:
            table = (ctx.certs_dir / table_name).read_bytes()
        except OSError as e:
            raise InputError(f"step '{ctx.step.id}': cannot read SRK table {table_name} in the certificates "
                             f"directory: {e.strerror}") from None
        soc = ctx.option("soc", "imx93")
        algorithm = _fuse_hash(soc)
        index = srk_index(options)
        sgk_name = ctx.option("sgk_key")
        if sgk_name is None and ("sgk_permissions" in options or "sgk_uuid" in options):
            raise InputError("options sgk_permissions and sgk_uuid need sgk_key")
        sgk = ctx.named_key(sgk_name)[0] if sgk_name is not None else None
        signed, done = ahab.sign_image(image.read_bytes(), table, index, ctx.key, _offsets(options),
                                       _int(options, "revoke_mask", None, 0, 15), sgk, _permissions(options),
                                       _uuid(options))
        for offset in done:  # as `ahab sign` does: each container is checked before anything is written
            ahab.verify_container(signed, offset, table)
        (ctx.out_dir / image.name).write_bytes(signed)
        # The SRK table is public; shipping it lets `release verify` and engineers check the fuse value.
        (ctx.out_dir / table_name).write_bytes(table)
        return {"image": image.name, "soc": soc, "srk_table": table_name, "hash_algorithm": algorithm,
                "srk_hash": ahab.srk_hash(table, algorithm).hex(), "containers": done, "sgk": sgk is not None}

    def verify(self, ctx: VerifyContext) -> None:
        d, options = ctx.record["details"], ctx.record.get("options") or {}
        table = (ctx.out_dir / d["srk_table"]).read_bytes()
        algorithm = _fuse_hash(d["soc"])
        if d.get("hash_algorithm") != algorithm or ahab.srk_hash(table, algorithm).hex() != d["srk_hash"]:
            raise VerificationError(f"{d['srk_table']} does not hash to the SRK fuse value in the manifest")
        image = (ctx.out_dir / d["image"]).read_bytes()
        # The containers the plan asked for, as when signing: all but NXP's unless it named some.
        expected = _offsets(options)
        if expected is None:
            expected = [c.offset for c in ahab.find_containers(image) if c.srk_set != ahab.SRK_SET_NXP]
        if list(d["containers"]) != expected:
            raise VerificationError(f"step '{ctx.step_id}': the manifest lists the signed containers "
                                    f"{_hex(d['containers'])}, but the plan asks for {_hex(expected)}")
        index = srk_index(options)
        revoke_mask = _int(options, "revoke_mask", None, 0, 15)
        sgk = "sgk_key" in options
        if bool(d.get("sgk")) != sgk:
            raise VerificationError(f"step '{ctx.step_id}': the manifest says the containers are signed by "
                                    f"{'an SGK' if d.get('sgk') else 'the SRK'}, the plan by "
                                    f"{'an SGK' if sgk else 'the SRK'}")
        for offset in expected:
            report = ahab.verify_container(image, offset, table)
            where = f"container 0x{offset:x}"
            if report["srk_index"] != index:
                raise VerificationError(f"{where} is signed under SRK {report['srk_index'] + 1}, "
                                        f"not SRK {index + 1} as the plan says")
            if bool(report.get("sgk")) != sgk:
                raise VerificationError(f"{where} is {'' if report.get('sgk') else 'not '}signed by an SGK; "
                                        f"the plan says it is {'' if sgk else 'not '}")
            if revoke_mask is not None and report["revoke_mask"] != revoke_mask:
                raise VerificationError(f"{where} has revocation mask {report['revoke_mask']}, "
                                        f"not {revoke_mask} as the plan says")
            if sgk:
                permissions = ahab.permission_names(_permissions(options))
                uuid = _uuid(options)
                if report["sgk_permissions"] != permissions or report["sgk_uuid"] != (uuid.hex() if uuid else None):
                    raise VerificationError(f"{where}: its SGK certificate's permissions or UUID are not "
                                            "the plan's")
        srk = ahab.parse_srk_table(table)[index]
        if not any(spki_der(srk.public_key) == spki_der(c.public_key()) for c in ctx.certs):
            raise VerificationError(f"SRK {index + 1} of {d['srk_table']} is the key of none of the "
                                    "trusted certificates")


def _hex(offsets) -> str:
    return ", ".join(f"0x{o:x}" if isinstance(o, int) else repr(o) for o in offsets) or "none"
