"""Secure-world firmware for the QEMU device, built from Debian's pinned source packages.

- TF-A (PLAT=qemu, GICv3, SPD=opteed, TRUSTED_BOARD_BOOT=1, GENERATE_COT=0) with the ROTPK hash of
  the ROT key in the token: BL1, BL2, BL31. Certificates and the FIP are made by segway-sign.
- OP-TEE OS (vexpress-qemu_armv8a, GICv3) with the PKCS#11 TA as an early TA and our own TA
  public key (never upstream's ``keys/default.pem``).
- U-Boot (qemu_arm64) with the layer's FIT-verification and locked-console fragments and the
  harness's boot fragment; its control device tree (holding the FIT key) is appended at the end
  (``with_control_dtb``), so it is part of BL33, which BL2 authenticates.

Each build is cached under ``cache_dir("firmware")`` by the hash of its inputs (pinned source,
compiler, options, key material, configuration fragments); a changed input is a cache miss and a
new build. The build trees are kept per source and options, so a new ceremony's keys (ROTPK hash,
TA key) cost a relink, not a rebuild.

The builds are reproducible, and ``check_reproducible`` (``python -m segway_dev
firmware-reproducible``) proves it by building each a second time from scratch at another path.
What would otherwise differ: the dates in the banners (``SOURCE_DATE_EPOCH``: GCC's ``__DATE__``
and ``__TIME__`` for TF-A, U-Boot's and OP-TEE's own date commands), the version strings (from the
pins, not from ``git describe`` of the repository the cache sits in: ``BUILD_STRING``,
``TEE_IMPL_VERSION``, ``CFG_OS_REV_REPORTS_GIT_SHA1=n``) and OP-TEE's build counter (reset before
each build). Paths stay out of the images without extra flags: TF-A's release build has no
assertions, so no ``__FILE__`` (mbedTLS's included), OP-TEE names its sources relative to its
source tree, and U-Boot maps its source tree away itself (``-ffile-prefix-map=$(srctree)/=``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import cache, debsrc

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER_UBOOT_FRAGMENTS = [
    REPO_ROOT / "meta-segway/recipes-bsp/u-boot/files/segway-fit-verify.cfg",
    REPO_ROOT / "meta-segway/recipes-bsp/u-boot/files/segway-console-locked.cfg",
]
HARNESS_UBOOT_FRAGMENT = Path(__file__).with_name("uboot-qemu-chain.cfg")
CROSS_COMPILE = "aarch64-linux-gnu-"
SOURCE_DATE_EPOCH = "1700000000"  # fixed: the builds embed their date
JOBS = str(max(1, min(os.cpu_count() or 1, 4)))

# TF-A's make options, shared with the layer check (tests/meta_segway/test_chain_config.py).
TFA_OPTIONS = {
    "PLAT": "qemu",
    "QEMU_USE_GIC_DRIVER": "QEMU_GICV3",  # OP-TEE is built for GICv3; TF-A's default GICv2 crashes it
    "SPD": "opteed",
    "BL32_RAM_LOCATION": "tdram",
    "TRUSTED_BOARD_BOOT": "1",
    "GENERATE_COT": "0",  # certificates come from segway-sign with keys in the token
    "KEY_ALG": "ecdsa",
    "KEY_SIZE": "256",
    "HASH_ALG": "sha256",
    "E": "0",  # mbedTLS 3.6 headers trip -Werror=redundant-decls
    # The version banner: without it TF-A asks `git describe`, which answers for whatever
    # repository the cache sits in.
    "BUILD_STRING": debsrc.PINS["arm-trusted-firmware"].version,
}
OPTEE_OPTIONS = {
    "PLATFORM": "vexpress-qemu_armv8a",
    "CFG_ARM64_core": "y",
    "CFG_ARM_GICV3": "y",
    "CFG_USER_TA_TARGETS": "ta_arm64",
    # segway-kms reaches OP-TEE's PKCS#11 TA through libckteec: part of tee.bin, so no TA key check.
    "CFG_PKCS11_TA": "y",
    "CFG_IN_TREE_EARLY_TAS": "pkcs11/fd02c9da-306c-48c7-a49c-bbd827ae86ee",
    # Not the commit of whatever repository the cache sits in (reproducible builds).
    "CFG_OS_REV_REPORTS_GIT_SHA1": "n",
    "TEE_IMPL_VERSION": debsrc.PINS["optee-os"].version,
}
UBOOT_DEFCONFIG = "qemu_arm64_defconfig"


class FirmwareError(RuntimeError):
    """A firmware build failed or its output is missing."""


@dataclasses.dataclass(frozen=True)
class TfaBuild:
    bl1: Path
    bl2: Path
    bl31: Path


@dataclasses.dataclass(frozen=True)
class OpteeBuild:
    header: Path  # tee-header_v2.bin: BL32
    pager: Path  # tee-pager_v2.bin: BL32 extra 1
    pageable: Path  # tee-pageable_v2.bin: BL32 extra 2 (may be empty)
    ta_dev_kit: Path  # export-ta_arm64
    conf: dict = dataclasses.field(repr=False)  # CFG_* of the build (conf.mk)


def _compiler_identity() -> str:
    try:
        out = subprocess.run([f"{CROSS_COMPILE}gcc", "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise FirmwareError(f"{CROSS_COMPILE}gcc is not installed (apt: gcc-aarch64-linux-gnu)") from None
    return out.splitlines()[0]


def _build_env() -> dict:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, LC_ALL="C", TZ="UTC")
    # OP-TEE's and U-Boot's build scripts need Debian's python3 (pyelftools, cryptography), which a
    # virtualenv or pyenv first in PATH would hide.
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAKEFLAGS"):
        env.pop(var, None)
    return env


def _make(argv: list[str], cwd: Path, log: Path, what: str) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        proc = subprocess.run(argv, cwd=cwd, env=_build_env(), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise FirmwareError(f"{what} failed (exit {proc.returncode}): {tail[0][:200]}; log: {log}")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """One firmware build: what identifies it, how it is made and what it outputs."""
    name: str
    inputs: dict  # the cache key: pinned sources, compiler, options, key material
    sources: tuple[str, ...]  # the debsrc pins it reads
    # build(out, log, tree, sources): fills ``out`` with ``outputs``, building in ``tree`` from the
    # unpacked source directories (by pin name).
    build: Callable[[Path, Path, Path, dict[str, Path]], None]
    outputs: tuple[str, ...]  # the firmware images, compared byte for byte by check_reproducible
    keys: tuple[str, ...] = ()  # inputs that only cost a relink of an existing tree


def _cached(recipe: _Recipe, progress: Callable[[str], None] | None) -> Path:
    """Directory of ``recipe``'s build for its inputs, built on a miss.

    The build tree is kept between builds that differ only in the ``keys`` inputs (a new
    ceremony's keys): make then rebuilds only what the key reaches, in seconds, instead of the
    whole firmware."""
    name, inputs = recipe.name, recipe.inputs
    key = _digest(inputs)
    tree_key = _digest({k: v for k, v in inputs.items() if k not in recipe.keys})
    root = cache.cache_dir("firmware")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{key}"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "inputs.json").is_file():
            return final
        if progress:
            progress(f"building {name} from Debian's source (first run, or its inputs changed)")
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        tree = root / f"tree-{name}-{tree_key}"
        tree.mkdir(exist_ok=True)
        try:
            out = work / "out"
            out.mkdir()
            recipe.build(out, work / "build.log", tree, {n: debsrc.source_tree(n) for n in recipe.sources})
            (out / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            out.rename(final)
            shutil.copy(work / "build.log", final / "build.log")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def rotpk_hash(rot_public_key_der: bytes) -> bytes:
    """What TF-A's ROTPK_HASH holds: SHA-256 of the ROT key's DER SubjectPublicKeyInfo."""
    return hashlib.sha256(rot_public_key_der).digest()


TFA_OUTPUTS = ("bl1.bin", "bl2.bin", "bl31.bin")


def _tfa_recipe(rot_public_key_pem: bytes, rot_public_key_der: bytes) -> _Recipe:
    digest = rotpk_hash(rot_public_key_der)
    inputs = {
        "source": [debsrc.pin_identity("arm-trusted-firmware"), debsrc.pin_identity("mbedtls")],
        "compiler": _compiler_identity(),
        "options": TFA_OPTIONS,
        "rotpk_sha256": digest.hex(),
    }

    def build(out: Path, log: Path, tree: Path, sources: dict[str, Path]) -> None:
        src, mbedtls = sources["arm-trusted-firmware"], sources["mbedtls"]
        keys = tree / "keys"
        keys.mkdir(exist_ok=True)
        rot_pem, rot_hash = keys / "rot_pub.pem", keys / "rotpk_sha256.bin"
        rot_pem.write_bytes(rot_public_key_pem)
        rot_hash.write_bytes(digest)
        # qemu's platform makefile regenerates both with `openssl genrsa` unless ROT_KEY names an
        # existing file older than ROTPK_HASH (its rule also cannot hash an EC key).
        os.utime(rot_pem, (1, 1))
        opts = [f"{k}={v}" for k, v in TFA_OPTIONS.items()]
        _make(["make", f"-j{JOBS}", f"CROSS_COMPILE={CROSS_COMPILE}", *opts, f"MBEDTLS_DIR={mbedtls}",
               f"ROT_KEY={rot_pem}", f"ROTPK_HASH={rot_hash}", f"BUILD_BASE={tree / 'build'}",
               "bl1", "bl2", "bl31"], src, log, "TF-A build")
        release = tree / "build" / "qemu" / "release"
        for name in TFA_OUTPUTS:
            shutil.copy(release / name, out / name)

    return _Recipe("tf-a", inputs, ("arm-trusted-firmware", "mbedtls"), build, TFA_OUTPUTS,
                   keys=("rotpk_sha256",))


def build_tfa(rot_public_key_pem: bytes, rot_public_key_der: bytes, *,
              progress: Callable[[str], None] | None = None) -> TfaBuild:
    """BL1, BL2 and BL31 that trust the ROT key whose public half is given."""
    d = _cached(_tfa_recipe(rot_public_key_pem, rot_public_key_der), progress)
    return TfaBuild(*(d / name for name in TFA_OUTPUTS))


def _read_conf_mk(path: Path) -> dict:
    conf = {}
    for line in path.read_text().splitlines():
        if line.startswith("CFG_") and "=" in line:
            key, _, value = line.partition("=")
            conf[key.strip()] = value.strip()
    return conf


OPTEE_OUTPUTS = ("tee-header_v2.bin", "tee-pager_v2.bin", "tee-pageable_v2.bin")


def _optee_recipe(ta_public_key_pem: bytes) -> _Recipe:
    if b"PUBLIC KEY" not in ta_public_key_pem:
        raise FirmwareError("the TA key for OP-TEE must be a PEM public key")
    inputs = {
        "source": debsrc.pin_identity("optee-os"),
        "compiler": _compiler_identity(),
        "options": OPTEE_OPTIONS,
        "ta_public_key_sha256": hashlib.sha256(ta_public_key_pem).hexdigest(),
    }

    def build(out: Path, log: Path, tree: Path, sources: dict[str, Path]) -> None:
        key = tree / "ta_pub.pem"
        key.write_bytes(ta_public_key_pem)
        opts = [f"{k}={v}" for k, v in OPTEE_OPTIONS.items()]
        build_dir = tree / "build"
        # The banner counts the builds of a tree ("#2"): a relink must print what a fresh build does.
        (build_dir / "core" / ".buildcount").unlink(missing_ok=True)
        _make(["make", f"-j{JOBS}", *opts, f"CROSS_COMPILE={CROSS_COMPILE}",
               f"CROSS_COMPILE_core={CROSS_COMPILE}", f"CROSS_COMPILE_ta_arm64={CROSS_COMPILE}",
               f"TA_PUBLIC_KEY={key}", f"O={build_dir}"], sources["optee-os"], log, "OP-TEE OS build")
        for name in OPTEE_OUTPUTS:
            shutil.copy(build_dir / "core" / name, out / name)
        shutil.copy(build_dir / "conf.mk", out / "conf.mk")
        shutil.rmtree(out / "export-ta_arm64", ignore_errors=True)
        shutil.copytree(build_dir / "export-ta_arm64", out / "export-ta_arm64", symlinks=True)

    return _Recipe("optee-os", inputs, ("optee-os",), build, OPTEE_OUTPUTS, keys=("ta_public_key_sha256",))


def build_optee(ta_public_key_pem: bytes, *, progress: Callable[[str], None] | None = None) -> OpteeBuild:
    """OP-TEE OS that loads only user TAs signed by the key whose public half is given."""
    d = _cached(_optee_recipe(ta_public_key_pem), progress)
    return OpteeBuild(*(d / name for name in OPTEE_OUTPUTS), d / "export-ta_arm64", _read_conf_mk(d / "conf.mk"))


def uboot_fragments() -> list[Path]:
    return [*LAYER_UBOOT_FRAGMENTS, HARNESS_UBOOT_FRAGMENT]


UBOOT_OUTPUTS = ("u-boot-nodtb.bin",)


def _uboot_recipe() -> _Recipe:
    fragments = uboot_fragments()
    inputs = {
        "source": debsrc.pin_identity("u-boot"),
        "compiler": _compiler_identity(),
        "defconfig": UBOOT_DEFCONFIG,
        "fragments": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in fragments},
    }

    def build(out: Path, log: Path, tree: Path, sources: dict[str, Path]) -> None:
        src = sources["u-boot"]
        o = tree / "build"
        base = ["make", f"O={o}", f"CROSS_COMPILE={CROSS_COMPILE}"]
        _make([*base, UBOOT_DEFCONFIG], src, log, "U-Boot configuration")
        _make(["scripts/kconfig/merge_config.sh", "-O", str(o), "-m", str(o / ".config"),
               *map(str, fragments)], src, log, "U-Boot configuration fragments")
        _make([*base, "olddefconfig"], src, log, "U-Boot configuration")
        _check_fragments_applied(o / ".config", fragments)
        _make([*base, f"-j{JOBS}", "u-boot-nodtb.bin"], src, log, "U-Boot build")
        shutil.copy(o / "u-boot-nodtb.bin", out / "u-boot-nodtb.bin")
        shutil.copy(o / ".config", out / "u-boot.config")

    return _Recipe("u-boot", inputs, ("u-boot",), build, UBOOT_OUTPUTS)


def build_uboot(*, progress: Callable[[str], None] | None = None) -> Path:
    """U-Boot for qemu_arm64 without its device tree (``u-boot-nodtb.bin``)."""
    return _cached(_uboot_recipe(), progress) / "u-boot-nodtb.bin"


def _check_fragments_applied(config: Path, fragments: list[Path]) -> None:
    """Kconfig silently drops a symbol whose dependencies are not met: refuse that."""
    have = set(config.read_text().splitlines())
    for frag in fragments:
        for line in frag.read_text().splitlines():
            line = line.strip()
            if line.startswith("CONFIG_") and line not in have:
                raise FirmwareError(f"U-Boot did not take {line!r} from {frag.name}")
            if line.startswith("# CONFIG_") and line.endswith(" is not set"):
                sym = line.split()[1]
                if any(h.startswith(sym + "=") for h in have):
                    raise FirmwareError(f"U-Boot kept {sym} that {frag.name} turns off")


def with_control_dtb(uboot_nodtb: Path, control_dtb: bytes) -> bytes:
    """U-Boot with its control device tree appended (CONFIG_OF_SEPARATE), as U-Boot's own
    ``u-boot-dtb.bin`` rule does: the tree, and the FIT key in it, become part of BL33."""
    data = uboot_nodtb.read_bytes()
    if len(data) % 8:
        raise FirmwareError("u-boot-nodtb.bin is not 8-byte aligned; its device tree would not be found")
    return data + control_dtb


# Fixed public keys for the reproducibility check (their private halves were never kept): the
# check's first build stays in the cache, so running it again costs only the second builds.
REPRODUCIBLE_KEYS = Path(__file__).with_name("reproducible")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One output of a firmware built twice."""
    firmware: str
    file: str
    size: int
    second_size: int
    first_difference: int | None  # offset of the first differing byte; None: identical
    second: Path | None = None  # the second build's file, kept when it differs

    @property
    def identical(self) -> bool:
        return self.first_difference is None

    def summary(self) -> str:
        if self.identical:
            return f"{self.firmware} {self.file}: identical ({self.size} bytes)"
        sizes = f"{self.size} bytes" if self.size == self.second_size else f"{self.size} vs {self.second_size} bytes"
        return (f"{self.firmware} {self.file}: differs from offset {self.first_difference:#x} ({sizes}); "
                f"second build: {self.second}")


def first_difference(a: bytes, b: bytes) -> int | None:
    """Offset of the first byte where ``a`` and ``b`` differ (the shorter one's length if it is a
    prefix of the other), or None if they are equal."""
    if a == b:
        return None
    n, step, lo = min(len(a), len(b)), 4096, 0
    while lo < n and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    return next((i for i in range(lo, min(lo + step, n)) if a[i] != b[i]), n)


def _rebuild(recipe: _Recipe, first: Path, progress: Callable[[str], None] | None) -> list[Comparison]:
    """Build ``recipe`` again from a freshly unpacked source in a new directory (another absolute
    path, of another length) and compare its outputs with ``first``'s. The second build is removed
    if every output is identical, else kept for a look (diffoscope, readelf)."""
    root = cache.cache_dir("firmware-reproducible")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{recipe.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for old in root.glob(f"{recipe.name}-second-*"):  # a difference kept by an earlier check
            shutil.rmtree(old, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{recipe.name}-second-", dir=root))
        if progress:
            progress(f"building {recipe.name} a second time from scratch in {work}")
        started = time.monotonic()
        sources = {n: debsrc.unpack_fresh(n, work / "src") for n in recipe.sources}
        (work / "out").mkdir()
        (work / "tree").mkdir()
        recipe.build(work / "out", work / "build.log", work / "tree", sources)
        if progress:
            progress(f"second {recipe.name} build: {time.monotonic() - started:.0f} s")
        results = []
        for name in recipe.outputs:
            a, b = (first / name).read_bytes(), (work / "out" / name).read_bytes()
            diff = first_difference(a, b)
            results.append(Comparison(recipe.name, name, len(a), len(b), diff,
                                      None if diff is None else work / "out" / name))
        if all(c.identical for c in results):
            shutil.rmtree(work)
        return results


def _proof_path(recipe: _Recipe) -> Path:
    return cache.cache_dir("firmware-reproducible") / f"{recipe.name}-{_digest(recipe.inputs)}.identical.json"


def reproducible_recipes() -> list[_Recipe]:
    """The three firmware builds with the check's fixed keys."""
    from cryptography.hazmat.primitives import serialization

    rot_pem = (REPRODUCIBLE_KEYS / "rot.pub.pem").read_bytes()
    rot_der = serialization.load_pem_public_key(rot_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [_tfa_recipe(rot_pem, rot_der), _optee_recipe((REPRODUCIBLE_KEYS / "ta.pub.pem").read_bytes()),
            _uboot_recipe()]


def check_reproducible(*, progress: Callable[[str], None] | None = None, reuse_proof: bool = False,
                       recipes: list[_Recipe] | None = None) -> list[Comparison]:
    """Build TF-A, OP-TEE and U-Boot as the device does (through the cache: a hit, a relink or a
    build), then each once more from scratch elsewhere with the same keys, and compare every
    firmware image byte for byte.

    A firmware found identical is recorded by the hash of its inputs; with ``reuse_proof`` that
    record stands in for the second build (the test suite: a changed pin, compiler or option is a
    new hash, so it is proven again)."""
    results = []
    for recipe in recipes if recipes is not None else reproducible_recipes():  # one at a time
        proof = _proof_path(recipe)
        if reuse_proof and proof.is_file():
            results += [Comparison(**c) for c in json.loads(proof.read_text())]
            continue
        compared = _rebuild(recipe, _cached(recipe, progress), progress)
        results += compared
        if all(c.identical for c in compared):
            tmp = proof.with_name(proof.name + ".tmp")
            tmp.write_text(json.dumps([{k: v for k, v in dataclasses.asdict(c).items() if k != "second"}
                                       for c in compared], indent=1) + "\n")
            tmp.replace(proof)
    return results


def main(argv: list[str] | None = None) -> int:
    """Fetch and build everything once (used to warm the cache): python -m segway_dev.firmware."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m segway_dev.firmware", description=main.__doc__)
    parser.parse_args(argv)
    try:
        print(build_uboot(progress=print))
    except (FirmwareError, debsrc.SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
