"""``segway-sign fip``: TF-A FIP with the STM32MP1 trusted-board-boot certificates."""

from __future__ import annotations

from pathlib import Path

import click

from ..atomic import check_writable, output_dir, write_file
from ..errors import UsageError
from ..formats.tfa import fip
from .common import IN_FILE, emit, load_public_key, output_options, read_input, token_options
from .stm32 import read_pkh

# Separate-image options, named as fiptool/cert_create name them.
IMAGE_OPTIONS = ["tos-fw", "tos-fw-extra1", "tos-fw-extra2", "tos-fw-config", "nt-fw", "nt-fw-config",
                 "hw-config", "fw-config"]


def _image_options(func):
    for name in reversed(IMAGE_OPTIONS):
        func = click.option(f"--{name}", name.replace("-", "_"), type=IN_FILE,
                            help=f"{name} image (instead of --fip).")(func)
    return func


def _report_text(report: dict) -> str:
    counters = report["nv_counters"]
    return (
        f"ROT key PKH {report['rot_pkh']}\n"
        f"NV counters: trusted {counters['trusted_nvctr']}, non-trusted {counters['non_trusted_nvctr']}\n"
        + "\n".join(f"  {e['name']}: {e['size']} bytes" for e in report["entries"])
        + "".join(f"\nwarning: {name} is not covered by the chain of trust" for name in report["unauthenticated"])
    )


@click.group("fip")
def group() -> None:
    """TF-A FIP for STM32MP1 with TRUSTED_BOARD_BOOT: TBBR certificates signed by the ROT key."""


@group.command("sign")
@click.option("--rot-key", "rot_uri", required=True, metavar="URI",
              help="ROT key (ECDSA P-256, the same key that signs BL2) as a pkcs11: URI.")
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
def sign_cmd(rot_uri, fip_path, out_path, tfw_nvctr, ntfw_nvctr, align, certs_dir, token, force, as_json,
             **images):
    """Create the TBBR certificates and pack them into a FIP."""
    given = {name: path for name, path in images.items() if path is not None}
    if bool(fip_path) == bool(given):
        raise UsageError("give either --fip or the separate images (--tos-fw, --nt-fw, ...)")
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
    options = dict(tfw_nvctr=tfw_nvctr, ntfw_nvctr=ntfw_nvctr, align=align)
    if fip_path:
        packed, certs = fip.sign(read_input(fip_path), rot_key, **options)
    else:
        packed, certs = fip.sign_images({n: read_input(p) for n, p in given.items()}, rot_key, **options)
    report = fip.verify(packed, rot_public_key=rot_key.public_key())
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
@click.option("--fip", "fip_path", required=True, type=IN_FILE)
@click.option("--rot-pubkey", metavar="FILE", help="ROT public key (PEM/DER public key or certificate).")
@click.option("--pkh", "pkh_hex", metavar="HEX", help="Expected ROT key PKH (SHA-256 of raw X||Y), as fused.")
@click.option("--pkh-file", type=IN_FILE, help="Expected PKH as a 32-byte binary or a hex text file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(fip_path, rot_pubkey, pkh_hex, pkh_file, as_json):
    """Verify the chain of trust in a FIP from the ROT key."""
    if rot_pubkey and rot_pubkey.startswith("pkcs11:"):
        raise UsageError("--rot-pubkey takes a file; export the public key or use --pkh")
    public_key = load_public_key(rot_pubkey, None) if rot_pubkey else None
    report = fip.verify(read_input(fip_path), rot_public_key=public_key, rot_pkh=read_pkh(pkh_hex, pkh_file))
    report["input"] = str(fip_path)
    emit(report, as_json, f"OK {fip_path}\n{_report_text(report)}")
