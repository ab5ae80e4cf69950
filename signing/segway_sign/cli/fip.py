"""``segway-sign fip``: TF-A FIP with trusted-board-boot certificates: STM32MP1's chain of trust or
TF-A's generic one (``--cot``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..atomic import check_writable, output_dir, write_file
from ..errors import UsageError
from ..formats.tfa import fip, tbbr
from .common import EXIT_NO_ANCHOR, IN_FILE, emit, load_public_key, output_options, read_input, token_options
from .stm32 import read_pkh

# Separate-image options, named as fiptool/cert_create name them.
IMAGE_OPTIONS = ["tb-fw", "tb-fw-config", "soc-fw", "soc-fw-config", "tos-fw", "tos-fw-extra1", "tos-fw-extra2",
                 "tos-fw-config", "nt-fw", "nt-fw-config", "hw-config", "fw-config"]
# The generic chain's keys below the ROT key, named as cert_create names them.
KEY_ROLES = {opt: role for role, opt in tbbr.KEY_OPTIONS.items() if role != "rot"}
COT_OPTION = click.option("--cot", type=click.Choice(sorted(tbbr.CHAINS)), default="stm32mp1", show_default=True,
                          help="Chain of trust: STM32MP1's (fdts/stm32mp1-cot-descriptors.dtsi) or TF-A's generic "
                               "TBBR chain (PLAT=qemu, i.MX8M, Arm platforms).")


def _image_options(func):
    for name in reversed(IMAGE_OPTIONS):
        func = click.option(f"--{name}", name.replace("-", "_"), type=IN_FILE,
                            help=f"{name} image (instead of --fip).")(func)
    return func


def _key_options(func):
    for opt in reversed(KEY_ROLES):
        func = click.option(f"--{opt}", opt.replace("-", "_"), metavar="URI",
                            help=f"--cot generic: the {opt[:-4]} key (pkcs11: URI).")(func)
    return func


def _report_text(report: dict) -> str:
    counters = report["nv_counters"]
    return (
        f"{'ROT key PKH' if report['cot'] == 'stm32mp1' else 'ROTPK hash'} {report['rot_pkh']}\n"
        f"NV counters: trusted {counters['trusted_nvctr']}, non-trusted {counters['non_trusted_nvctr']}\n"
        + "\n".join(f"  {e['name']}: {e['size']} bytes" for e in report["entries"])
        + "".join(f"\nwarning: {name} is not covered by the chain of trust" for name in report["unauthenticated"])
    )


@click.group("fip")
def group() -> None:
    """TF-A FIP with TRUSTED_BOARD_BOOT: TBBR certificates (STM32MP1's chain or TF-A's generic one)."""


@group.command("sign")
@COT_OPTION
@click.option("--rot-key", "rot_uri", required=True, metavar="URI",
              help="ROT key as a pkcs11: URI (stm32mp1: ECDSA P-256, the key that signs BL2; generic: ECDSA "
                   "P-256 or RSA, the key whose ROTPK hash BL1/BL2 hold).")
@_key_options
@click.option("--fip", "fip_path", type=IN_FILE, help="Unsigned (or previously signed) FIP.")
@_image_options
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tfw-nvctr", type=click.IntRange(0, 0x7FFFFFFF), default=0, show_default=True,
              help="Trusted firmware NV counter (anti-rollback).")
@click.option("--ntfw-nvctr", type=click.IntRange(0, 0x7FFFFFFF), default=0, show_default=True,
              help="Non-trusted firmware NV counter (anti-rollback).")
@click.option("--align", type=click.IntRange(1, 1 << 20), default=1, show_default=True,
              help="fiptool image alignment.")
@click.option("--certs-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the DER certificates to this new directory.")
@token_options
@output_options
def sign_cmd(cot, rot_uri, fip_path, out_path, tfw_nvctr, ntfw_nvctr, align, certs_dir, token, force, as_json,
             **options):
    """Create the TBBR certificates and pack them into a FIP.

    stm32mp1 (default): the ROT key signs; the other keys are made fresh for each signing. generic:
    every key comes from the token (--rot-key, --trusted-world-key, --non-trusted-world-key,
    --soc-fw-key, --tos-fw-key, --nt-fw-key)."""
    key_uris = {KEY_ROLES[o]: options.pop(o.replace("-", "_")) for o in KEY_ROLES}
    key_uris = {role: uri for role, uri in key_uris.items() if uri is not None}
    given = {name: path for name, path in options.items() if path is not None}
    if bool(fip_path) == bool(given):
        raise UsageError("give either --fip or the separate images (--tos-fw, --nt-fw, ...)")
    chain = tbbr.chain(cot)
    outside = [name for name in given if name not in chain.image_names]
    if outside:
        raise UsageError(f"the {cot} chain of trust does not cover "
                         f"{', '.join('--' + n.replace('_', '-') for n in outside)}")
    tbbr.check_key_roles(chain, ["rot", *key_uris])  # before the token is opened
    check_writable(out_path, force)
    if certs_dir is not None and certs_dir.exists() and not force:
        raise UsageError(f"--certs-dir {certs_dir} exists (use --force to replace it)")
    warnings = []
    if tfw_nvctr != ntfw_nvctr:
        # Usually raised together; different values are most often one counter forgotten.
        warnings.append(f"the trusted and non-trusted firmware NV counters differ (--tfw-nvctr {tfw_nvctr}, "
                        f"--ntfw-nvctr {ntfw_nvctr}); a board refuses images below the counters it stores")
        click.echo(f"segway-sign: warning: {warnings[-1]}", err=True)
    rot_key = token.open_key(rot_uri)
    keys = {role: token.open_key(uri) for role, uri in key_uris.items()}
    options = dict(cot=cot, keys=keys, tfw_nvctr=tfw_nvctr, ntfw_nvctr=ntfw_nvctr, align=align)
    if fip_path:
        packed, certs = fip.sign(read_input(fip_path), rot_key, **options)
    else:
        packed, certs = fip.sign_images({n: read_input(p) for n, p in given.items()}, rot_key, **options)
    report = fip.verify(packed, cot=cot, rot_public_key=rot_key.public_key())
    if certs_dir is not None:
        with output_dir(certs_dir, force=force) as tmp:
            for name, der in certs.items():
                (tmp / f"{name}.crt").write_bytes(der)
    write_file(out_path, packed, force=force)
    report["output"] = str(out_path)
    if warnings:
        report["warnings"] = warnings
    emit(report, as_json, f"signed {out_path}\n{_report_text(report)}")


@group.command("verify")
@COT_OPTION
@click.option("--fip", "fip_path", required=True, type=IN_FILE)
@click.option("--rot-key", "--rot-pubkey", "rot_pubkey", metavar="FILE",
              help="ROT public key (PEM/DER public key or certificate).")
@click.option("--rot-pkh", metavar="FILE|HEX",
              help="Expected hash of the ROT key, as a file (32 bytes or hex) or hex: stm32mp1: the fused PKH "
                   "(SHA-256 of raw X||Y); generic: TF-A's ROTPK_HASH (SHA-256 of its DER SubjectPublicKeyInfo).")
@click.option("--pkh", "pkh_hex", metavar="HEX", help="Expected ROT key PKH as hex (as --rot-pkh).")
@click.option("--pkh-file", type=IN_FILE, help="Expected PKH as a 32-byte binary or a hex text file (as --rot-pkh).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(cot, fip_path, rot_pubkey, rot_pkh, pkh_hex, pkh_file, as_json):
    """Verify the chain of trust in a FIP from the ROT key.

    --cot generic: exit 0 when the chain is anchored (--rot-key or --rot-pkh); 3 when every signature
    and hash checks but nothing ties the ROT key to the device ("OK (signature only: ...)")."""
    if rot_pubkey and rot_pubkey.startswith("pkcs11:"):
        raise UsageError("--rot-key takes a file here; export the public key or use --rot-pkh")
    if rot_pkh is not None:
        if pkh_hex or pkh_file:
            raise UsageError("give one of --rot-pkh, --pkh, --pkh-file")
        if Path(rot_pkh).exists():
            pkh_file = Path(rot_pkh)
        else:
            pkh_hex = rot_pkh
    public_key = load_public_key(rot_pubkey, None) if rot_pubkey else None
    report = fip.verify(read_input(fip_path), cot=cot, rot_public_key=public_key,
                        rot_pkh=read_pkh(pkh_hex, pkh_file))
    report["input"] = str(fip_path)
    if cot != "stm32mp1" and public_key is None and pkh_hex is None and pkh_file is None:
        emit(report, as_json, f"OK (signature only: no trust anchor given) {fip_path} (give --rot-pkh or "
             f"--rot-key, what BL1/BL2 are built with)\n{_report_text(report)}")
        sys.exit(EXIT_NO_ANCHOR)
    emit(report, as_json, f"OK {fip_path}\n{_report_text(report)}")
