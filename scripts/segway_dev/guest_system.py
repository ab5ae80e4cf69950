"""The device's runtime root file system: Debian trixie arm64 under systemd, with the layer's own
units and configuration and segway-kms installed from this repository.

No Yocto build fits this machine, so the root is assembled from Debian's arm64 packages (extracted,
never run: there is no arm64 chroot here) and then carries, at the paths its recipes install them,
the files the image ships from ``meta-segway/`` and ``kms/conf/`` (:data:`LAYER_FILES`: the
segway-kmsd unit and its image drop-in, tmpfiles, the /dev/tee udev rule, the sysctls, the sshd
policy, tee-supplicant's sandbox, the host-key drop-in). What a Yocto build would add from other
layers, and what Debian's maintainer scripts would have done, the harness provides and names as
its own (:data:`STAND_INS`): the users (``systemd-sysusers --root`` over the packages' sysusers.d
and the recipes' useradd lines), meta-arm's ``tee-supplicant@.service``, OE's ``sshdgenkeys``,
test access for root (as the layer's segway-test-access does), the network address.

Python modules: the KMS's pins as manylinux aarch64 wheels (hash-pinned), tpm2-pytss from Debian
(no wheel exists), segway-kms as the wheel its own build makes. Bytecode is compiled for the
guest's Python by the guest itself, once, in a build-time boot (:func:`precompile`): the root is
read-only and verity-checked, so nothing may compile into it later.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import bootmedia, cache, guest_packages

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER = REPO_ROOT / "meta-segway"
PYTHON = "python3.13"
SITE = f"usr/local/lib/{PYTHON}/dist-packages"  # first on Debian's sys.path

# Debian's Essential set is never a dependency: name what the root needs of it (the /bin, /lib
# links of merged /usr come with base-files).
ESSENTIAL = {
    "base-files": "13.8+deb13u8", "bash": "5.2.37-2+b10", "coreutils": "9.7-3", "dash": "0.5.12-12",
    "util-linux": "2.41.5-0+deb13u1", "mount": "2.41.5-0+deb13u1", "libc-bin": "2.41-12+deb13u5",
    "sed": "4.9-2+deb13u1", "grep": "3.11-4+b1", "findutils": "4.10.0-3", "gzip": "1.13-1+deb13u1",
    "hostname": "3.25", "login": "1:4.16.0-2+really2.41.5-0+deb13u1", "debianutils": "5.23.2",
    "sysvinit-utils": "3.14-4", "tar": "1.35+dfsg-3.1", "ncurses-base": "6.5+20250216-2",
}
# Debian trixie arm64, pinned; their closure without Recommends.
PACKAGES = {**ESSENTIAL,
    "systemd": "257.13-1~deb13u1", "systemd-sysv": "257.13-1~deb13u1", "udev": "257.13-1~deb13u1",
    "libnss-systemd": "257.13-1~deb13u1", "openssh-server": "1:10.0p1-7+deb13u4",
    "python3": "3.13.5-1", "python3-tpm2-pytss": "2.3.0-1+b1",
    "tee-supplicant": "4.5.0-1", "libckteec0t64": "4.5.0-1", "opensc": "0.26.1-2",
    "tpm2-tools": "5.7-1+b1", "libtss2-tcti-swtpm0t64": "4.1.3-1.2",
    "iproute2": "6.15.0-1", "kmod": "34.2-2", "procps": "2:4.0.4-9", "acl": "2.3.2-2+b1",
    "openssl": "3.5.9-1~deb13u1", "dmsetup": "2:1.02.205-2",
    "libstdc++6": "14.2.0-19",  # the grpcio wheel links it (manylinux: from the system)
}
# kms/pyproject.toml's pins (and what they need), for CPython 3.13 on aarch64.
WHEELS = {
    "grpcio-1.85.1-cp313-cp313-manylinux2014_aarch64.manylinux_2_17_aarch64.whl":
        "0bde4264ca71aaf3bc56c587380c426b1c959d1db0ab0a3f632bc66515f9726f",
    "grpcio_health_checking-1.85.1-py3-none-any.whl":
        "05e1cb0cc69706f89e884d219c9b2b9da4f561c1c610e9987ee4492b9c826ad1",
    "protobuf-7.36.2-cp310-abi3-manylinux2014_aarch64.whl":
        "e11e1f0180583a2af89db6a2ecd9e8dc40aa6d2988ca175bfd0e6d12ea72d74e",
    "python_pkcs11-0.10.1-cp313-cp313-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl":
        "6c05e23631b0e95585a7936392df12ac68fc5051e24f12a952bf536d5cf83baf",
    "cryptography-50.0.2-cp311-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl":
        "79def8d059362e7831389ed3be0ecdf58a89386e1271e35dd9f5af84e81bffd0",
    "pyyaml-6.0.3-cp313-cp313-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl":
        "ee2922902c45ae8ccada2c5b501ab86c36525b883eff4255313a253a3160861c",
    "click-8.5.1-py3-none-any.whl": "8bb5376d2006950386f8c6427613334a2acadc5f559cb80e638d00b4df957e37",
    "cffi-2.1.1-cp313-cp313-manylinux2014_aarch64.manylinux_2_17_aarch64.whl":
        "f16c709686a78c727bbbf059f92b0bf41c6fc60deec706d2dc19f529175a6125",
    "pycparser-3.12-py3-none-any.whl": "a076f3f489b39b43ed13563a1dafe42447445bec2e294154ec5c57fcdda4c85e",
    "typing_extensions-4.16.0-py3-none-any.whl":
        "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8",
    "asn1crypto-1.5.1-py2.py3-none-any.whl": "db4e40728b728508912cbb3d44f19ce188f218e9eba635821bb4b68564f8fd67",
}
ENTRY_POINTS = {"segway-kmsd": "segway_kms.server.daemon:main", "segway-kmsctl": "segway_kms.cli.main:run"}

_SEC = "recipes-security"
# (file in this repository, where the image has it, mode): as the recipes install them.
LAYER_FILES = [
    ("kms/conf/segway-kmsd.service", "usr/lib/systemd/system/segway-kmsd.service", 0o644),
    (f"meta-segway/{_SEC}/segway-kms/files/segway-kmsd-image.conf",
     "usr/lib/systemd/system/segway-kmsd.service.d/segway-image.conf", 0o644),
    (f"meta-segway/{_SEC}/segway-kms/files/segway-kms.tmpfiles", "usr/lib/tmpfiles.d/segway-kms.conf", 0o644),
    (f"meta-segway/{_SEC}/segway-kms/files/70-segway-kms-tee.rules",
     "usr/lib/udev/rules.d/70-segway-kms-tee.rules", 0o644),
    (f"meta-segway/{_SEC}/segway-hardening/files/90-segway.conf", "etc/sysctl.d/90-segway.conf", 0o644),
    (f"meta-segway/{_SEC}/segway-hardening/files/segway-sshd.conf", "etc/ssh/sshd_config.d/00-segway.conf", 0o644),
    (f"meta-segway/{_SEC}/segway-hardening/files/tee-supplicant-hardening.conf",
     "usr/lib/systemd/system/tee-supplicant@.service.d/segway-hardening.conf", 0o644),
    (f"meta-segway/{_SEC}/segway-hardening/files/segway-hardening.tmpfiles",
     "usr/lib/tmpfiles.d/segway-hardening.conf", 0o644),
    ("meta-segway/recipes-connectivity/openssh/files/sshdgenkeys-data.conf",
     "usr/lib/systemd/system/sshdgenkeys.service.d/segway-data.conf", 0o644),
]
# segway-hardening's SEGWAY_TEE_SUPPL_USER on scarthgap (meta-arm runs tee-supplicant as root).
TEE_SUPPL_USER = "root"
TPM_HOST = "10.0.2.100"  # the guestfwd address the guest reaches the host's swtpm on
TPM_PORT = 2321  # swtpm TCTI: command port; the control port is the next one
TPM_TCTI = f"swtpm:host={TPM_HOST},port={TPM_PORT}"
KMS_TCP_PORT = 50051
GUEST_ADDRESS = "10.0.2.15/24"
TOKEN_LABEL = "segway-kms"
TOKEN_PIN_FILE = "/data/segway-kms/token.pin"
LIBCKTEEC = "/usr/lib/aarch64-linux-gnu/libckteec.so.0"

# What the recipes' useradd lines create (segway-kms_0.1.0.bb) and tpm2-tss's (the group the unit's
# SupplementaryGroups names), in sysusers.d syntax for systemd-sysusers.
SYSUSERS = """\
g tss -
u tss -:tss "TPM2 software stack" /var/lib/tpm /usr/sbin/nologin
g segway-kms -
g segway-kms-admin -
u segway-kms -:segway-kms "segway-kms" /data/segway-kms /sbin/nologin
"""

# The harness's own stand-ins (see the module docstring), path -> content.
STAND_INS = {
    # meta-arm's optee-client unit; Debian's tee-supplicant is built for /var/lib/tee, the layer's
    # bbappend builds it for /data/tee (CFG_TEE_FS_PARENT_PATH): the option says the same.
    "usr/lib/systemd/system/tee-supplicant@.service": """\
[Unit]
Description=TEE Supplicant on %i (the BSP's optee-client unit)

[Service]
User=root
EnvironmentFile=-/etc/default/tee-supplicant
ExecStart=/usr/sbin/tee-supplicant $OPTARGS

[Install]
WantedBy=basic.target
""",
    "etc/default/tee-supplicant": "OPTARGS=--fs-parent-path=/data/tee\n",
    # OE's sshdgenkeys: host keys on the data partition (the layer's drop-in orders it after /data).
    "usr/lib/systemd/system/sshdgenkeys.service": """\
[Unit]
Description=SSH host keys on the data partition (OE's sshdgenkeys)
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p -m 0700 /data/ssh && test -s /data/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /data/ssh/ssh_host_ed25519_key'
RemainAfterExit=yes
""",
    "usr/lib/systemd/system/ssh.service.d/segway-dev.conf": "[Unit]\nRequires=sshdgenkeys.service\nAfter=sshdgenkeys.service\n",
    "etc/ssh/sshd_config.d/01-segway-dev-hostkey.conf": "HostKey /data/ssh/ssh_host_ed25519_key\n"
        # Debian's PAM stacks come from pam-auth-update in a maintainer script, which never ran.
        "UsePAM no\n",
    # segway-test-access, as kas/testimage.yml adds it: root by the runner's key, never a password.
    "etc/ssh/sshd_config.d/0-segway-test.conf":
        "# oeqa test image only: root may log in with the test key, never with a password.\n"
        "PermitRootLogin prohibit-password\n"
        # The runner's key is provisioned on the data partition (make_data_disk), so the signed root
        # is the same for every runner.
        "AuthorizedKeysFile /data/ssh/authorized_keys\n",
    "etc/segway-test-image": "oeqa test image\n",
    # /var is volatile on the read-only root (OE's read-only-rootfs does the same with binds).
    "etc/fstab": "LABEL=segway-data /data ext4 nosuid,nodev,noexec 0 0\n"
                 "tmpfs /var tmpfs mode=0755,nosuid,nodev 0 0\n",
    # The guest's journal on its console: a failing unit shows in the boot log a test keeps.
    "etc/systemd/journald.conf.d/segway-dev-console.conf":
        "[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyAMA0\nMaxLevelConsole=info\n",
    "etc/hostname": "segway-qemu\n",
    "etc/machine-id": "",
    "etc/systemd/network/10-segway-dev.network":
        f"[Match]\nName=e*\n\n[Network]\nAddress={GUEST_ADDRESS}\nGateway=10.0.2.2\nLinkLocalAddressing=no\n",
    # The image's segway-kmsd waits for the fTPM's /dev/tpmrm0 (segway-kmsd-image.conf); this guest
    # has none (no MMIO TPM driver in Debian's arm64 kernels): give up on it at once, not in 90 s.
    "etc/systemd/system/dev-tpmrm0.device.d/segway-dev.conf": "[Unit]\nJobRunningTimeoutSec=1s\n",
    # swtpm over the guestfwd (the image's /dev/tpmrm0 does not exist in this guest) for tpm2-tools.
    "etc/profile.d/segway-dev-tcti.sh": f"export TPM2TOOLS_TCTI={TPM_TCTI}\n",
}
ENABLE = {  # unit -> target whose .wants/ links it (what systemctl enable / presets would do)
    "segway-kmsd.service": "multi-user.target", "tee-supplicant@teepriv0.service": "basic.target",
    "ssh.service": "multi-user.target", "systemd-networkd.service": "multi-user.target",
}
# Not in an embedded image, and failing on a read-only /var without maintainer scripts.
MASK = ("tee-supplicant.service",  # Debian's; the image runs the BSP's tee-supplicant@teepriv0
        "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
        "systemd-pcrmachine.service", "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service",
        "systemd-tpm2-setup.service", "systemd-tpm2-setup-early.service", "getty@tty1.service")
_DROP = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
         f"usr/lib/{PYTHON}/test", f"usr/lib/{PYTHON}/idlelib", f"usr/lib/{PYTHON}/tkinter")


class GuestSystemError(RuntimeError):
    """The guest's root file system could not be assembled."""


def kms_config(backend: dict, state_dir: str = "/data/segway-kms") -> str:
    """kms/conf/segway-kms.yaml as the recipe installs it (profile, state_dir), with ``backend``."""
    import yaml

    text = (REPO_ROOT / "kms/conf/segway-kms.yaml").read_text()
    cfg = yaml.safe_load(text)
    cfg["profile"] = "development"  # SEGWAY_KMS_PROFILE of a development flavour
    cfg["state_dir"] = state_dir
    cfg["backend"] = backend
    return "# kms/conf/segway-kms.yaml as segway-kms_0.1.0.bb installs it, with this guest's backend.\n" + \
        yaml.safe_dump(cfg, sort_keys=False)


PKCS11_BACKEND = {"type": "pkcs11", "module": LIBCKTEEC, "token_label": TOKEN_LABEL, "pin_file": TOKEN_PIN_FILE}
TPM_BACKEND = {"type": "tpm", "tcti": TPM_TCTI, "srk_handle": 0x81000001, "audit_anchor_index": 0x01800100}
KMS_CONFIGS = {  # path -> contents: the daemon's own (OP-TEE's PKCS#11 TA) and the TPM variant
    "etc/segway-kms/segway-kms.yaml": kms_config(PKCS11_BACKEND),
    "etc/segway-kms/segway-kms-tpm.yaml": kms_config(TPM_BACKEND, "/data/segway-kms/tpm"),
}


def fetch_wheels() -> list[Path]:
    """The pinned wheels, downloaded once into the cache and checked against their hashes."""
    where = cache.cache_dir("guest-wheels")
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for name, digest in WHEELS.items():
        path = where / name
        if not path.is_file() or _sha256(path) != digest:
            dist, version = name.split("-")[:2]
            argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux2014_aarch64", "--python-version", "3.13", "--implementation", "cp",
                    "--dest", str(where), f"{dist}=={version}"]
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0 or not path.is_file():
                raise GuestSystemError(f"pip could not download {name}: {proc.stderr.strip()[-300:]}")
            if _sha256(path) != digest:
                path.unlink()
                raise GuestSystemError(f"{name} does not have its pinned sha256")
        out.append(path)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kms_sources_hash() -> str:
    h = hashlib.sha256()
    base = REPO_ROOT / "kms"
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if path.is_file() and "egg-info" not in str(rel) and "__pycache__" not in rel.parts \
                and rel.parts[0] in ("segway_kms", "setup.py", "pyproject.toml", "README.md") \
                and not rel.name.startswith("kms_pb2"):
            h.update(str(rel).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def kms_wheel() -> Path:
    """segway-kms as its own build makes it (setup.py generates the gRPC stubs); cached by source."""
    where = cache.cache_dir("guest-wheels") / f"segway-kms-{kms_sources_hash()}"
    found = sorted(where.glob("segway_kms-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="segway-kms-wheel-") as tmp:
        src = Path(tmp) / "kms"
        shutil.copytree(REPO_ROOT / "kms", src, ignore=shutil.ignore_patterns(
            "*.egg-info", "__pycache__", "build", "kms_pb2*.py", "kms_pb2.pyi"))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(Path(tmp) / "out"),
                               str(src)], capture_output=True, text=True)
        wheels = sorted((Path(tmp) / "out").glob("segway_kms-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise GuestSystemError(f"pip wheel kms/ failed: {proc.stderr.strip()[-300:]}")
        where.mkdir(parents=True, exist_ok=True)
        tmp_dest = where / (wheels[0].name + ".tmp")
        shutil.copyfile(wheels[0], tmp_dest)
        tmp_dest.replace(where / wheels[0].name)
    return where / wheels[0].name


def _install_wheel(wheel: Path, stage: Path) -> None:
    site = stage / SITE
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.split("/", 1)[0].endswith(".data"):
                raise GuestSystemError(f"{wheel.name} has a .data directory this installer does not place")
            zf.extract(info, site)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(site / info.filename, mode | 0o444)


def _entry_script(target: str) -> str:
    module, func = target.split(":")
    return f"#!/usr/bin/python3\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n"


def _write(stage: Path, rel: str, content: str | bytes, mode: int = 0o644) -> None:
    dest = stage / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chmod(dest, mode)


def _link_unit(stage: Path, unit: str, target_dir: str) -> None:
    link = stage / "etc/systemd/system" / target_dir / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    template = unit.split("@")[0] + "@.service" if "@" in unit else unit
    if link.is_symlink():
        link.unlink()
    os.symlink(f"/usr/lib/systemd/system/{template}", link)


def _group_id(stage: Path, name: str) -> int:
    for line in (stage / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise GuestSystemError(f"no group {name} in the guest's /etc/group")


def assemble(stage: Path) -> dict:
    """The root file system's tree in ``stage`` (replaced); returns what went in (packages, wheels)."""
    guest = guest_packages.fetch(PACKAGES, recommends=False)
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(guest.root, stage, symlinks=True)
    for alias in ("bin", "sbin", "lib"):
        if not (stage / alias).is_symlink():
            raise GuestSystemError(f"/{alias} is not the merged-/usr link (base-files {ESSENTIAL['base-files']})")
    for rel in _DROP:
        shutil.rmtree(stage / rel, ignore_errors=True)

    wheels = fetch_wheels() + [kms_wheel()]
    for wheel in wheels:
        _install_wheel(wheel, stage)
    for name, target in ENTRY_POINTS.items():
        _write(stage, f"usr/bin/{name}", _entry_script(target), 0o755)

    for src, dest, mode in LAYER_FILES:
        _write(stage, dest, (REPO_ROOT / src).read_bytes(), mode)
    hardening_tmpfiles = "usr/lib/tmpfiles.d/segway-hardening.conf"
    _write(stage, hardening_tmpfiles,
           (stage / hardening_tmpfiles).read_text().replace("@TEE_SUPPL_USER@", TEE_SUPPL_USER))
    for rel, content in STAND_INS.items():
        _write(stage, rel, content)
    _write(stage, "usr/lib/sysusers.d/segway.conf", SYSUSERS)
    # What openssh-server's and systemd's maintainer scripts would have put into /etc.
    _write(stage, "etc/ssh/sshd_config", (stage / "usr/share/openssh/sshd_config").read_bytes())
    (stage / "etc/mtab").unlink(missing_ok=True)
    os.symlink("../proc/self/mounts", stage / "etc/mtab")

    # Users and groups: the packages' sysusers.d plus the recipes' (no maintainer script ran).
    # The host's systemd-sysusers (252) predates the "u!" type (257: a user whose account is
    # locked); sysusers gives system users a locked password ("!*") anyway.
    for conf in (stage / "usr/lib/sysusers.d").glob("*.conf"):
        text = conf.read_text()
        if "\nu! " in "\n" + text:
            conf.write_text("\n".join("u " + line[3:] if line.startswith("u! ") else line
                                      for line in text.splitlines()) + "\n")
    for rel in ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"):
        (stage / rel).unlink(missing_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    proc = subprocess.run(["systemd-sysusers", f"--root={stage}"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise GuestSystemError(f"systemd-sysusers failed: {proc.stderr.strip()[-300:]}")
    # root: no password at all ("*"), so the test key works with UsePAM no and no password ever does.
    shadow = stage / "etc/shadow"
    lines = [("root:*:" + line.split(":", 2)[2]) if line.startswith("root:") else line
             for line in shadow.read_text().splitlines()]
    shadow.write_text("\n".join(lines) + "\n")

    kms_gid = _group_id(stage, "segway-kms")
    for rel, content in KMS_CONFIGS.items():
        _write(stage, rel, content, 0o640)
        os.chown(stage / rel, 0, kms_gid)
    os.chmod(stage / "etc/segway-kms", 0o750)
    os.chown(stage / "etc/segway-kms", 0, kms_gid)
    _group_id(stage, "tss")  # the unit's SupplementaryGroups: fail here, not at the daemon's start

    for unit, target in ENABLE.items():
        _link_unit(stage, unit, f"{target}.wants")
    for unit in MASK:
        link = stage / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        os.symlink("/dev/null", link)
    default = stage / "etc/systemd/system/default.target"
    if not default.is_symlink():
        os.symlink("/usr/lib/systemd/system/multi-user.target", default)
    (stage / "data").mkdir(exist_ok=True)
    return {"packages": guest.packages, "wheels": [w.name for w in wheels]}


PRECOMPILE_DIRS = (f"/usr/lib/{PYTHON}", "/usr/lib/python3/dist-packages", f"/{SITE}")

# /init of the build-time boot: the root read-write, bytecode for the guest's own Python, ldconfig.
PRECOMPILE_INIT = rf"""for m in virtio_mmio virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt || {{ echo PRECOMPILE-MOUNT-FAILED; poweroff -f; }}
mount -t proc proc /mnt/proc && mount -t devtmpfs devtmpfs /mnt/dev
mkdir -p /mnt/dev/shm && mount -t tmpfs tmpfs /mnt/dev/shm  # compileall -j: multiprocessing's locks
if chroot /mnt /usr/bin/python3 -m compileall -q -j 2 {' '.join(PRECOMPILE_DIRS)} && \
   chroot /mnt /sbin/ldconfig; then echo PRECOMPILE-OK; else echo PRECOMPILE-FAILED; fi
umount /mnt/dev/shm /mnt/proc /mnt/dev; umount /mnt; sync
"""


def precompile(image: Path, work: Path, log: Path, progress=print) -> None:
    """Boot the guest's kernel on the unsigned root once (no firmware: nothing is trusted yet) and
    let its Python compile the bytecode into it."""
    media = bootmedia.fetch_boot_media(flavour="generic")
    initrd = bootmedia.build_initramfs(work / "precompile-initrd.gz", bootmedia.init_script(PRECOMPILE_INIT),
                                       modules=["virtio_mmio", "virtio_pci", "virtio_blk", "crc32c_generic", "ext4"],
                                       media=media)
    argv = ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "1024",
            "-display", "none", "-nic", "none", "-no-reboot", "-serial", f"file:{log}", "-monitor", "none",
            "-kernel", str(media.kernel_image), "-initrd", str(initrd),
            "-append", "console=ttyAMA0 rdinit=/init panic=-1",
            "-drive", f"if=virtio,format=raw,file={image}"]
    progress("compiling the guest's Python bytecode in the guest (one boot, cached with the root)")
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        raise GuestSystemError(f"the bytecode boot did not finish in 30 minutes; log: {log}") from None
    text = log.read_text(errors="replace") if log.is_file() else ""
    if "PRECOMPILE-OK" not in text:
        raise GuestSystemError(f"the guest could not compile its bytecode; log: {log}")


def image_size(stage: Path) -> int:
    used = sum(p.lstat().st_size for p in stage.rglob("*"))
    return ((used * 3 // 2 + (64 << 20)) >> 20) << 20  # room for bytecode and ext4's metadata


def build_rootfs(out: Path, progress=print) -> Path:
    """The guest's root as an ext4 image with bytecode (cached by everything that goes into it)."""
    ident = hashlib.sha256(json.dumps([PACKAGES, WHEELS, kms_sources_hash(),
                                       [(s, d, m, (REPO_ROOT / s).read_text()) for s, d, m in LAYER_FILES],
                                       STAND_INS, SYSUSERS, KMS_CONFIGS, ENABLE, MASK, PRECOMPILE_INIT,
                                       Path(__file__).read_text()]).encode()).hexdigest()[:20]
    cached = cache.cache_dir("guest-rootfs") / f"rootfs-{ident}.ext4"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="segway-guest-root-", dir=cached.parent) as tmp:
            stage = Path(tmp) / "root"
            progress("assembling the guest's root file system from Debian trixie arm64 packages")
            assemble(stage)
            image = Path(tmp) / "rootfs.ext4"
            subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "segway-root", "-d", str(stage),
                            str(image), f"{image_size(stage) >> 20}M"], check=True, capture_output=True,
                           env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"))
            precompile(image, Path(tmp), cached.parent / "precompile.log", progress)
            subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)
            image.replace(cached)
        for stale in cached.parent.glob("rootfs-*.ext4"):  # one root at a time: each is ~400 MiB
            if stale != cached:
                stale.unlink(missing_ok=True)
    shutil.copyfile(cached, out)
    return out


def make_data_disk(path: Path, ssh_pubkey: str, size: str = "128M") -> Path:
    """A fresh writable data partition (ext4, label segway-data): what /data starts as, holding only
    the test runner's SSH key (as a test image's provisioning puts it there)."""
    with tempfile.TemporaryDirectory(prefix="segway-data-") as tmp:
        ssh = Path(tmp) / "ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(ssh_pubkey.strip() + "\n")
        os.chmod(ssh / "authorized_keys", 0o600)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "segway-data", "-E", "root_owner=0:0", "-d", tmp,
                        str(path), size], check=True, capture_output=True)
    return path
