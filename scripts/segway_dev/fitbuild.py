"""Build unsigned FIT images with Debian's mkimage, laid out for QEMU's ``virt`` board.

Every image gets ``hash-1 { algo = "sha256"; }`` and ``conf-1`` carries a ``signature-1`` node that
lists every image the configuration references in ``sign-images`` (patched/new U-Boot verifies
exactly that set). Signing happens elsewhere; :func:`mkimage_sign` wraps Debian's mkimage for the
harness's own tests.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path

import libfdt

# RAM of QEMU -M virt starts at 0x40000000 on both arm and arm64. QEMU puts the control DTB at the
# start of RAM; the kernel goes 4 MiB above it (2 MiB-aligned as arm64 requires), the FIT well
# above the kernel's footprint (the Debian arm64 Image needs ~28 MiB).
KERNEL_LOAD = {"arm64": 0x40400000, "arm": 0x40400000}
FIT_ADDR = 0x48000000
UBOOT_ARCH = {"arm64": "arm64", "arm": "arm"}

DEFAULT_ALGO = "sha256,rsa2048"
DEFAULT_KEY_NAME = "dev"


class FitBuildError(RuntimeError):
    """mkimage failed or its output is not what was asked for."""


@dataclasses.dataclass(frozen=True)
class FitImages:
    kernel: Path
    fdt: Path
    ramdisk: Path | None = None


def _its_path(path: Path) -> str:
    text = str(Path(path).resolve())
    if '"' in text or "\\" in text:
        raise FitBuildError(f"unusable path for an ITS /incbin/: {text}")
    if not Path(text).is_file():
        raise FitBuildError(f"missing input file: {text}")
    return text


def render_its(
    images: FitImages,
    *,
    arch: str = "arm64",
    key_name_hint: str = DEFAULT_KEY_NAME,
    algo: str = DEFAULT_ALGO,
    description: str = "segway kernel FIT",
    kernel_load: int | None = None,
) -> str:
    """Return the ITS text for a kernel/fdt[/ramdisk] FIT with one signable configuration."""
    if arch not in UBOOT_ARCH:
        raise FitBuildError(f"unknown arch {arch!r} (expected one of {', '.join(UBOOT_ARCH)})")
    load = KERNEL_LOAD[arch] if kernel_load is None else kernel_load
    u_arch = UBOOT_ARCH[arch]
    hash_node = 'hash-1 { algo = "sha256"; };'
    parts = [
        "/dts-v1/;",
        "/ {",
        f'\tdescription = "{description}";',
        "\t#address-cells = <1>;",
        "\timages {",
        "\t\tkernel-1 {",
        '\t\t\tdescription = "Linux kernel";',
        f'\t\t\tdata = /incbin/("{_its_path(images.kernel)}");',
        '\t\t\ttype = "kernel";',
        f'\t\t\tarch = "{u_arch}";',
        '\t\t\tos = "linux";',
        '\t\t\tcompression = "none";',
        f"\t\t\tload = <{load:#x}>;",
        f"\t\t\tentry = <{load:#x}>;",
        f"\t\t\t{hash_node}",
        "\t\t};",
        "\t\tfdt-1 {",
        '\t\t\tdescription = "Flattened device tree";',
        f'\t\t\tdata = /incbin/("{_its_path(images.fdt)}");',
        '\t\t\ttype = "flat_dt";',
        f'\t\t\tarch = "{u_arch}";',
        '\t\t\tcompression = "none";',
        f"\t\t\t{hash_node}",
        "\t\t};",
    ]
    signed = ['"kernel"', '"fdt"']
    conf_refs = ['\t\t\tkernel = "kernel-1";', '\t\t\tfdt = "fdt-1";']
    if images.ramdisk is not None:
        parts += [
            "\t\tramdisk-1 {",
            '\t\t\tdescription = "initramfs";',
            f'\t\t\tdata = /incbin/("{_its_path(images.ramdisk)}");',
            '\t\t\ttype = "ramdisk";',
            f'\t\t\tarch = "{u_arch}";',
            '\t\t\tos = "linux";',
            '\t\t\tcompression = "none";',
            f"\t\t\t{hash_node}",
            "\t\t};",
        ]
        signed.append('"ramdisk"')
        conf_refs.append('\t\t\tramdisk = "ramdisk-1";')
    parts += [
        "\t};",
        "\tconfigurations {",
        '\t\tdefault = "conf-1";',
        "\t\tconf-1 {",
        '\t\t\tdescription = "signed boot configuration";',
        *conf_refs,
        "\t\t\tsignature-1 {",
        f'\t\t\t\talgo = "{algo}";',
        f'\t\t\t\tkey-name-hint = "{key_name_hint}";',
        f"\t\t\t\tsign-images = {', '.join(signed)};",
        "\t\t\t};",
        "\t\t};",
        "\t};",
        "};",
        "",
    ]
    return "\n".join(parts)


def _run_mkimage(argv: list[str], env: dict | None = None) -> str:
    try:
        proc = subprocess.run(["mkimage", *argv], capture_output=True, text=True, env=env)
    except FileNotFoundError as exc:
        raise FitBuildError("mkimage is not installed (Debian package u-boot-tools)") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise FitBuildError(f"mkimage {argv[0]} failed: {lines[-1] if lines else proc.returncode}")
    return proc.stdout


def _mkimage_env(source_date_epoch: int | None) -> dict:
    env = dict(os.environ)
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(int(source_date_epoch))
    return env


def build_fit(
    out: Path,
    images: FitImages,
    *,
    arch: str = "arm64",
    key_name_hint: str = DEFAULT_KEY_NAME,
    algo: str = DEFAULT_ALGO,
    source_date_epoch: int | None = None,
    kernel_load: int | None = None,
) -> Path:
    """Build an unsigned FIT at ``out`` with ``mkimage -f``; also writes ``out`` + ``.its``.

    ``SOURCE_DATE_EPOCH`` (argument, else environment) fixes the root timestamp.
    """
    out = Path(out)
    its_text = render_its(images, arch=arch, key_name_hint=key_name_hint, algo=algo,
                          kernel_load=kernel_load)
    out.parent.mkdir(parents=True, exist_ok=True)
    its = out.with_name(out.name + ".its")
    its.write_text(its_text)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        _run_mkimage(["-f", str(its), tmp], env=_mkimage_env(source_date_epoch))
        libfdt.Fdt(Path(tmp).read_bytes())  # mkimage output must parse as an FDT
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def build_tiny_fit(out: Path, *, arch: str = "arm", payload_size: int = 4096, **kwargs) -> Path:
    """Build an unsigned FIT whose kernel/fdt/ramdisk are small stand-ins (signature checks only).

    The "kernel" is a deterministic non-executable blob: this FIT is for asking U-Boot whether it
    accepts the signature, never for jumping into it.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="tinyfit-") as tmp:
        tmpdir = Path(tmp)
        kernel = tmpdir / "kernel.bin"
        kernel.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(payload_size)))
        ramdisk = tmpdir / "ramdisk.bin"
        ramdisk.write_bytes(b"segway tiny ramdisk\n" * 16)
        fdt = tmpdir / "board.dtb"
        fdt.write_bytes(_tiny_dtb())
        return build_fit(out, FitImages(kernel, fdt, ramdisk), arch=arch, **kwargs)


def build_kernel_fit(
    out: Path,
    fdt: Path,
    *,
    init: str | None = None,
    modules: tuple[str, ...] | list[str] = (),
    media=None,
    extra_files=None,
    **kwargs,
) -> Path:
    """Build an unsigned arm64 FIT: Debian's cloud kernel, ``fdt`` (QEMU's tree dumped with the
    boot options) and a busybox initramfs (written to ``out`` + ``.initramfs.cpio.gz``) whose
    ``/init`` defaults to printing the userspace marker and powering off; ``extra_files`` as
    ``bootmedia.build_initramfs`` takes them."""
    from . import bootmedia  # the download is only needed for kernel FITs

    media = media or bootmedia.fetch_boot_media()
    out = Path(out)
    initramfs = bootmedia.build_initramfs(out.with_name(out.name + ".initramfs.cpio.gz"),
                                          init if init is not None else bootmedia.DEFAULT_INIT,
                                          extra_files, modules=modules, media=media)
    return build_fit(out, FitImages(media.kernel_image, Path(fdt), initramfs), arch="arm64", **kwargs)


def _tiny_dtb() -> bytes:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_string("compatible", "segway,tiny")
        sw.property_u32("#address-cells", 1)
        sw.property_u32("#size-cells", 1)
    return bytes(sw.as_fdt().as_bytearray())


def mkimage_sign(
    fit: Path,
    keydir: Path,
    *,
    control_dtb: Path | None = None,
    required: bool = True,
    source_date_epoch: int | None = None,
) -> None:
    """Sign ``fit`` in place with Debian's ``mkimage -F -k keydir [-K control_dtb] [-r]``.

    mkimage exits 0 without signing when it cannot open the key, so the result is checked: every
    configuration signature node must carry a ``value`` afterwards.
    """
    before = libfdt.Fdt(Path(fit).read_bytes())
    for path in config_signature_nodes(before):
        hint = before.getprop(before.path_offset(path), "key-name-hint").as_str()
        needed = [f"{hint}.key"] + ([f"{hint}.crt"] if control_dtb is not None else [])
        for name in needed:
            if not (Path(keydir) / name).is_file():
                raise FitBuildError(f"signing key file missing: {Path(keydir) / name}")
    argv = ["-F", "-k", str(keydir)]
    if control_dtb is not None:
        argv += ["-K", str(control_dtb)]
    if required:
        argv.append("-r")
    argv.append(str(fit))
    _run_mkimage(argv, env=_mkimage_env(source_date_epoch))
    blob = libfdt.Fdt(Path(fit).read_bytes())
    for path in config_signature_nodes(blob):
        if blob.getprop(blob.path_offset(path), "value", [libfdt.NOTFOUND]) == -libfdt.NOTFOUND:
            raise FitBuildError(f"mkimage wrote no signature into {path} (key missing in {keydir}?)")


def config_signature_nodes(fit: libfdt.Fdt) -> list[str]:
    """Paths of all ``signature*`` nodes under ``/configurations/*``."""
    found = []
    confs = fit.path_offset("/configurations")
    conf = fit.first_subnode(confs, [libfdt.NOTFOUND])
    while conf >= 0:
        sub = fit.first_subnode(conf, [libfdt.NOTFOUND])
        while sub >= 0:
            if fit.get_name(sub).startswith("signature"):
                found.append(fit.get_path(sub))
            sub = fit.next_subnode(sub, [libfdt.NOTFOUND])
        conf = fit.next_subnode(conf, [libfdt.NOTFOUND])
    return found



def mkimage_inject_key(control_dtb: Path, keydir: Path, *, key_name_hint: str = DEFAULT_KEY_NAME,
                       algo: str = DEFAULT_ALGO, required: bool = True) -> Path:
    """Add ``/signature/key-<hint>`` (``required = "conf"`` if asked) to a control DTB in place
    with Debian's mkimage, which only writes keys while signing: a throw-away FIT is signed."""
    with tempfile.TemporaryDirectory(prefix="keyinject-") as tmp:
        scratch = build_tiny_fit(Path(tmp) / "scratch.itb", arch="arm", key_name_hint=key_name_hint,
                                 algo=algo, source_date_epoch=0)
        mkimage_sign(scratch, keydir, control_dtb=control_dtb, required=required)
    return Path(control_dtb)
