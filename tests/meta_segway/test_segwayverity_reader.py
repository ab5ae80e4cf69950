"""The initramfs module's verity.env reader (meta-segway's segwayverity), run on the host with the shells
it meets: busybox sh, as in segway-initramfs, and dash. Its table must be the one segway-sign derives,
veritysetup must accept the tree with exactly the options it hands to `veritysetup open`, and a
tampered env must be refused with one line, without running anything a value says."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from segway_dev import cache
from segway_sign.errors import SegwayError
from segway_sign.formats.verity import sign as verity_sign
from segway_sign.formats.verity import tree as verity_tree

from .layer import LAYER

SCRIPT = LAYER / "recipes-core" / "initrdscripts" / "files" / "segwayverity"
UUID = uuid.UUID("11111111-2222-3333-4444-555555555555")

# Load the module as initramfs-framework does (it is sourced for its functions), call the reader, and
# print what it set; a refusal prints its one-line reason.
DRIVER = """
. "$1"
shift
if segwayverity_load "$@"; then
    printf 'TABLE=%s\\nOPTIONS=%s\\nROOT=%s\\n' "$SEGWAY_VERITY_TABLE" "$SEGWAY_VERITY_OPTIONS" \
        "$SEGWAY_VERITY_ROOT_HASH"
else
    printf 'ERROR=%s\\n' "$SEGWAY_VERITY_ERROR"
    exit 3
fi
"""


def host_busybox() -> Path:
    """busybox for this host: from PATH, else Debian's busybox-static fetched once into the cache."""
    found = shutil.which("busybox")
    if found:
        return Path(found)
    root = cache.cache_dir("host-busybox")
    exe = root / "root" / "bin" / "busybox"
    if not exe.is_file():
        apt = root / "apt"
        for sub in ("lists/partial", "cache/archives/partial"):
            (apt / sub).mkdir(parents=True, exist_ok=True)
        opts = ["-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
                "-o", "Dir::State::status=/dev/null", "-o", "APT::Sandbox::User=root"]
        debs = root / "debs"
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir(parents=True)
        try:
            subprocess.run(["apt-get", *opts, "-qq", "update"], check=True, capture_output=True)
            subprocess.run(["apt-get", *opts, "-qq", "download", "busybox-static"], cwd=debs, check=True,
                           capture_output=True)
            for deb in debs.glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "root")], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"busybox is not installed and busybox-static could not be fetched ({e})")
    return exe


@pytest.fixture(scope="module", params=["busybox", "dash"])
def shell(request) -> list[str]:
    if request.param == "busybox":
        return [str(host_busybox()), "sh"]
    found = shutil.which("dash")
    if not found:
        pytest.skip("dash is not installed")
    return [found]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Both layouts signed by segway-sign, with the files the initramfs gets (verity.env, roothash)."""
    tmp = tmp_path_factory.mktemp("segwayverity")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "verity reader test")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    image = tmp / "rootfs.img"
    image.write_bytes(os.urandom(300 * 4096))
    out = {}
    for kind in ("appended", "separate"):
        res = verity_sign.sign_image(image, tmp / kind, key, cert,
                                     verity_tree.VerityParams(salt=b"\x5a" * 32, uuid=UUID),
                                     appended=kind == "appended")
        initramfs_dir = tmp / f"{kind}-initramfs"
        initramfs_dir.mkdir()
        shutil.copyfile(tmp / kind / "verity.env", initramfs_dir / "verity.env")
        shutil.copyfile(tmp / kind / res.files["roothash"], initramfs_dir / "roothash")
        out[kind] = {"res": res, "dir": initramfs_dir, "out": tmp / kind, "image": image}
    return out


def load(shell, directory: Path, *devices: str, cwd: Path | None = None) -> tuple[int, dict[str, str]]:
    r = subprocess.run([*shell, "-c", DRIVER, "driver", str(SCRIPT), str(directory), *devices],
                       capture_output=True, text=True, cwd=cwd, env={"PATH": os.environ["PATH"], "LC_ALL": "C"},
                       timeout=60)
    assert not r.stderr, r.stderr
    lines = r.stdout.splitlines()
    return r.returncode, dict(line.split("=", 1) for line in lines)


def test_reader_gives_the_derived_table_and_veritysetup_accepts_its_options(shell, signed):
    for kind, devices in (("appended", ["/dev/vda"]), ("separate", ["/dev/vda", "/dev/vdb"])):
        s = signed[kind]
        tree = s["res"].tree
        code, out = load(shell, s["dir"], *devices)
        assert code == 0, out
        assert out["TABLE"] == tree.table(devices[0], devices[-1])
        env = verity_sign.parse_env((s["dir"] / "verity.env").read_bytes())
        assert out["TABLE"] == verity_sign.device_table(env, *devices)
        assert out["ROOT"] == tree.root_hex
        # The oracle: veritysetup checks the whole tree with the parameters the device will use
        # (no superblock read), and refuses them with another root hash.
        if kind == "appended":
            data = hashes_file = s["out"] / s["res"].files["image"]
        else:
            data, hashes_file = s["image"], s["out"] / s["res"].files["hashtree"]
        options = out["OPTIONS"].split()
        assert "--no-superblock" in options
        ok = subprocess.run(["veritysetup", "verify", str(data), str(hashes_file), tree.root_hex, *options],
                            capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        wrong = format(int(tree.root_hex, 16) ^ 1, "064x")
        bad = subprocess.run(["veritysetup", "verify", str(data), str(hashes_file), wrong, *options],
                             capture_output=True, text=True)
        assert bad.returncode != 0


def attacks(text: str, root: str) -> dict[str, str | bytes]:
    """Each attack on a verity.env (signed: 300 blocks of 4 KiB, salt 5a…): name → the tampered file."""
    lines = text.splitlines(keepends=True)
    table = next(line for line in lines if line.startswith("VERITY_TABLE="))
    value = table.split("=", 1)[1].rstrip("\n")
    other = format(int(root, 16) ^ 0xFF, "064x")
    flipped = root[:10] + ("0" if root[10] != "0" else "1") + root[11:]

    def with_table(new_value: str) -> str:
        return text.replace(table, f"VERITY_TABLE={new_value}\n")

    return {
        "table root hash changed + ignore_corruption": with_table(value.replace(root, other) + " 1 ignore_corruption"),
        "one character of the table root hash": with_table(value.replace(root, flipped)),
        "command substitution in VERITY_IMAGE": "".join(
            "VERITY_IMAGE=$(touch PWNED)\n" if line.startswith("VERITY_IMAGE=") else line for line in lines),
        "command substitution in the table": with_table(value + " $(touch PWNED)"),
        "backquotes": text.replace("VERITY_LAYOUT=", "VERITY_LAYOUT=`touch PWNED`"),
        "unknown key": text + "VERITY_EXTRA=1\n",
        "unknown key that is a shell variable": text + "PATH=/tmp\n",
        "key with a space": text.replace("VERITY_SALT=", "VERITY_ROOT_HASH VERITY_SALT="),
        "duplicate key": text + "VERITY_SALT=-\n",
        "non-UTF-8 byte": text.replace("VERITY_LAYOUT=", "VERITY_LAYOUT=\xff").encode("latin-1"),
        "NUL byte": text.replace("VERITY_LAYOUT=", "VERITY_LAYOUT=\0").encode(),
        "option added": with_table(value + " 1 restart_on_corruption"),
        "two options added": with_table(value + " 2 restart_on_corruption ignore_zero_blocks"),
        "device instead of placeholder": with_table(value.replace("@DATA_DEV@", "/dev/sda", 1)),
        "missing key": "".join(line for line in lines if not line.startswith("VERITY_SALT=")),
        "no final newline": text.rstrip("\n"),
        "CRLF": text.replace("\n", "\r\n"),
        "quoted table, as the sourced format had": with_table(f'"{value}"'),
        "root hash changed everywhere but in roothash": text.replace(root, other),
        "sector count": with_table(value.replace("0 2400 ", "0 2392 ", 1)),
        "salt in the table": with_table(value[:-2] + "00"),
    }


ATTACKS = sorted(attacks("VERITY_TABLE=0 2400 verity 1 @DATA_DEV@ @DATA_DEV@ 4096 4096 300 301 sha256 "
                         + "a" * 64 + " 5a\n", "a" * 64))


@pytest.mark.parametrize("attack", ATTACKS)
def test_reader_refuses_a_tampered_env(shell, signed, tmp_path, attack):
    s = signed["appended"]
    text = (s["dir"] / "verity.env").read_text()
    root = s["res"].tree.root_hex
    assert " 2400 " in text  # the sector count the "sector count" attack edits
    new = attacks(text, root)[attack]
    tampered = tmp_path / "initramfs"
    tampered.mkdir()
    (tampered / "verity.env").write_bytes(new if isinstance(new, bytes) else new.encode())
    shutil.copyfile(s["dir"] / "roothash", tampered / "roothash")
    work = tmp_path / "cwd"
    work.mkdir()
    code, out = load(shell, tampered, "/dev/vda", cwd=work)
    assert code == 3, (attack, out)
    assert list(out) == ["ERROR"] and out["ERROR"].startswith("segway-verity: "), out
    assert not (work / "PWNED").exists()
    # segway-sign refuses the same file with one line (verify_dir checks more than the initramfs can).
    check = tmp_path / "release"
    shutil.copytree(s["out"], check)
    (check / "verity.env").write_bytes((tampered / "verity.env").read_bytes())
    with pytest.raises(SegwayError) as err:
        verity_sign.verify_dir(check, [])
    assert "\n" not in str(err.value)


def test_reader_refuses_bad_devices_and_a_missing_hash_device(shell, signed):
    assert load(shell, signed["separate"]["dir"], "/dev/vda")[1]["ERROR"].endswith("needs a hash device")
    for dev in ("vda", "/dev/vda 1 ignore_corruption", "/dev/$(touch PWNED)"):
        code, out = load(shell, signed["appended"]["dir"], dev)
        assert code == 3 and "device path" in out["ERROR"], out
