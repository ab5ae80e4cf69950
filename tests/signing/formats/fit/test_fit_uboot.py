"""Proof under QEMU: Debian's U-Boot accepts FITs segway-sign signed in a token, and refuses the
attacks of U-Boot's own test_vboot.py, unsigned FITs and FITs signed with another key.

qemu_arm64 stands for the i.MX8M class, qemu_arm (Cortex-A7) for the STM32MP157 class. The arm64
FIT carries Debian's cloud kernel and boots to userspace.
"""

from __future__ import annotations


import pytest

from tests.helpers import P11KitToken, SoftHsmToken, run_cli
from segway_dev import bootmedia, fit_attacks, fitbuild, qemu
from segway_sign.hsm import module

pytestmark = pytest.mark.qemu
EPOCH = 1700000000
ARCHES = ("arm64", "arm")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """arm64 signs through SoftHSM directly, arm through a p11-kit server (both real)."""
    direct = SoftHsmToken(tmp_path_factory.mktemp("direct"))
    remote = P11KitToken(tmp_path_factory.mktemp("p11kit"))
    uris = {}
    for arch, tok in (("arm64", direct), ("arm", remote)):
        uris[arch] = (tok, tok.generate("rsa2048", "segway-fit"), tok.generate("rsa2048", "other-fit"))
    module.reset()
    yield uris
    module.reset()
    remote.stop()


def _sign(tok, uri, unsigned, out, *extra):
    res = run_cli(["fit", "sign", "--key", uri, "--in", str(unsigned), "--out", str(out),
                   "--pin-file", str(tok.pin_file), *extra], tok, env={"SOURCE_DATE_EPOCH": str(EPOCH)})
    assert res.returncode == 0, res.stderr.decode()
    return out


@pytest.fixture(scope="module")
def setup(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("uboot")
    media = bootmedia.fetch_boot_media()
    result = {}
    for arch in ARCHES:
        tok, uri, other_uri = tokens[arch]
        dump = qemu.dump_control_dtb(arch, out / f"qemu-{arch}.dtb")
        control = out / f"control-{arch}.dtb"
        res = run_cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(dump), "--out", str(control),
                       "--key-name-hint", "dev", "--required", "conf", "--pin-file", str(tok.pin_file)], tok)
        assert res.returncode == 0, res.stderr.decode()
        if arch == "arm64":
            unsigned = fitbuild.build_kernel_fit(out / "kernel-unsigned.itb", dump, media=media,
                                                 source_date_epoch=EPOCH)
        else:
            unsigned = fitbuild.build_tiny_fit(out / "tiny-unsigned.itb", arch="arm", source_date_epoch=EPOCH)
        signed = _sign(tok, uri, unsigned, out / f"signed-{arch}.itb")
        foreign = _sign(tok, other_uri, unsigned, out / f"foreign-{arch}.itb")
        result[arch] = {"control": control, "unsigned": unsigned, "signed": signed, "foreign": foreign,
                        "dir": out}
    return result


def test_arm64_signed_kernel_fit_boots_to_userspace(setup):
    s = setup["arm64"]
    res = qemu.boot_fit("arm64", s["control"], s["signed"], log_path=s["dir"] / "boot.log")
    assert res.verified and res.userspace and not res.refused, res.summary()
    assert "sha256,rsa2048:dev+" in res.log


@pytest.mark.parametrize("arch", ARCHES)
def test_signed_fit_accepted(setup, arch):
    s = setup[arch]
    res = qemu.check_fit(arch, s["control"], s["signed"])
    assert res.accepted, res.summary()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", ["unsigned", "foreign"])
def test_unsigned_or_foreign_fit_refused(setup, arch, case):
    s = setup[arch]
    res = qemu.check_fit(arch, s["control"], s[case])
    assert res.refused and not res.verified, res.summary()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("attack", fit_attacks.ATTACKS, ids=lambda a: a.name)
def test_attacks_refused(setup, arch, attack, tmp_path):
    s = setup[arch]
    tampered = tmp_path / f"{attack.name}.itb"
    tampered.write_bytes(attack.apply(s["signed"].read_bytes()))
    res = qemu.check_fit(arch, s["control"], tampered, attack.conf)
    assert res.refused, res.summary()
