"""OP-TEE on the signed QEMU device loads a user TA signed by segway-sign with the TA key in the token,
and refuses the same TA unsigned, as Debian ships it (signed with upstream's default key of OP-TEE
4.5.0), signed with the default key of the pinned OP-TEE 4.10 source (what an OP-TEE built without
TA_PUBLIC_KEY trusts), signed by another key, and with one flipped payload byte. All cases run in one boot: the guest's /init swaps
``/lib/optee_armtz/<uuid>.ta`` between runs of ``xtest -t regression 1004``, which opens a session
to that TA (xtest's crypt TA, from trixie's optee-test-qemu). Each refusal is read from OP-TEE's own
console (UART1) and from the client (``TEEC_OpenSession`` gets TEE_ERROR_SECURITY).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from segway_dev import chain, debsrc, device, guest_packages, ta_proof
from segway_sign.formats.optee import ta as ta_format

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(1800)]

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-cryptography, as OP-TEE's scripts want
REFUSED = ("unsigned", "debian-default-key", "default-key", "other-key", "flipped-byte")
# The TA we signed runs last: a refusal can never be the leftover of a loaded instance.
CASES = (*REFUSED, "ours")


def _default_key() -> Path:
    return debsrc.source_tree("optee-os") / "keys" / "default.pem"


def _sign_encrypt(*args: str) -> None:
    script = debsrc.source_tree("optee-os") / "scripts" / "sign_encrypt.py"
    res = subprocess.run([SYSTEM_PYTHON, str(script), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def tas(signer, tmp_path_factory) -> dict[str, bytes]:
    """Each case's file for /lib/optee_armtz/<crypt TA uuid>.ta."""
    work = tmp_path_factory.mktemp("tas")
    guest = guest_packages.fetch(guest_packages.OPTEE_CLIENT)
    shipped = guest.path(f"{guest_packages.XTEST_TA_DIR}/{ta_proof.CRYPT_TA_UUID}.ta").read_bytes()
    parsed = ta_format.parse(shipped)
    assert str(parsed.uuid) == ta_proof.CRYPT_TA_UUID
    elf = work / f"{ta_proof.CRYPT_TA_UUID}.stripped.elf"
    elf.write_bytes(parsed.payload)

    ours = work / "ours.ta"
    signer("ta", "sign", "--key", device.key_uri(device.TA_KEY), "--in", elf,
           "--ta-version", parsed.ta_version, "--out", ours, *signer.pin)
    signer("ta", "verify", ours, "--pubkey", signer.root / "pki" / "keys" / f"{device.TA_KEY}.pub.pem",
           "--uuid", ta_proof.CRYPT_TA_UUID)

    default = work / "default.ta"  # upstream's key of the OP-TEE we built, with sign_encrypt.py
    _sign_encrypt("sign-enc", "--key", str(_default_key()), "--uuid", ta_proof.CRYPT_TA_UUID,
                  "--ta-version", str(parsed.ta_version), "--in", str(elf), "--out", str(default))

    other_key = work / "other.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072",
                    "-out", str(other_key)], check=True, capture_output=True)
    other = work / "other.ta"
    _sign_encrypt("sign-enc", "--key", str(other_key), "--uuid", ta_proof.CRYPT_TA_UUID,
                  "--ta-version", str(parsed.ta_version), "--in", str(elf), "--out", str(other))

    flipped = bytearray(ours.read_bytes())
    flipped[len(flipped) - len(parsed.payload) // 2] ^= 0x01  # a byte in the middle of the ELF

    return {
        "unsigned": parsed.payload,  # the bare ELF: no signed header at all
        "debian-default-key": shipped,  # as Debian ships it: OP-TEE 4.5.0's keys/default.pem
        "default-key": default.read_bytes(),
        "other-key": other.read_bytes(),
        "flipped-byte": bytes(flipped),
        "ours": ours.read_bytes(),
    }


@pytest.fixture(scope="module")
def run(signer, tas, tmp_path_factory) -> chain.ChainResult:
    work = tmp_path_factory.mktemp("ta-device")
    dev = device.build_device(work / "device", signer.root / "pki", signer, signer.pin,
                              init_body=ta_proof.init_body(CASES), extra_files=ta_proof.initramfs_files(tas),
                              progress=lambda msg: None)
    result = chain.boot(dev.flash, work / "boot", fit=dev.fit, timeout=900)
    assert not result.timed_out, result.summary()
    assert "userspace" in result.reached(), result.summary()
    return result


def test_case_tas_as_segway_sign_sees_them(tas, signer):
    """The inputs are what each case claims, checked on the host before OP-TEE sees them."""
    pub = signer.root / "pki" / "keys" / f"{device.TA_KEY}.pub.pem"
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(pub.read_bytes())
    ta_uuid = uuid.UUID(ta_proof.CRYPT_TA_UUID)
    ta_format.verify(tas["ours"], key, ta_uuid)
    for case in ("debian-default-key", "default-key", "other-key", "flipped-byte"):
        with pytest.raises(ta_format.VerificationError):
            ta_format.verify(tas[case], key, ta_uuid)
    with pytest.raises(ta_format.InputError):
        ta_format.parse(tas["unsigned"])
    # Debian's TA verifies with upstream's published key of its release (optee-os-dev 4.5.0), the
    # re-signed one with that of the pinned 4.10 source: each under upstream's default key.
    dev_kit = guest_packages.fetch(guest_packages.OPTEE_DEV_KIT, dependencies=False)
    for case, pem in (("debian-default-key", dev_kit.path(guest_packages.OPTEE_DEV_KIT_DEFAULT_KEY)),
                      ("default-key", _default_key())):
        public = serialization.load_pem_private_key(pem.read_bytes(), None).public_key()
        ta_format.verify(tas[case], public, ta_uuid)


def test_every_case_ran(run):
    assert list(ta_proof.case_runs(run.uart0)) == list(CASES), run.summary()
    assert "SEGWAY-TA-ERROR" not in run.uart0, run.summary()


def test_ta_signed_by_segway_sign_loads(run):
    ours = ta_proof.case_runs(run.uart0)["ours"]
    assert ours.passed, "\n".join(ours.log)
    assert not ours.security_error


@pytest.mark.parametrize("case", REFUSED)
def test_optee_refuses(run, case):
    refused = ta_proof.case_runs(run.uart0)[case]
    assert refused.rc != 0, "\n".join(refused.log)
    assert refused.security_error, "\n".join(refused.log)


# What ldelf says it was doing when OP-TEE refused each case: the signed header (magic, signature)
# is checked when the TA is opened, the payload's hash while ldelf reads it.
OPENING = f"sys_open_ta_bin({ta_proof.CRYPT_TA_UUID})"
LDELF_CALL = {"unsigned": OPENING, "debian-default-key": OPENING, "default-key": OPENING,
              "other-key": OPENING, "flipped-byte": "sys_copy_from_ta_bin"}


def test_optee_console_shows_each_refusal(run):
    """OP-TEE prints one refusal (TEE_ERROR_SECURITY) per refused case on its own UART, in the order
    the cases ran, and none for the TA we signed (it runs last)."""
    refusals = ta_proof.optee_refusals(run.uart1)
    shown = "\n".join(line for r in refusals for line in r.lines) + f"\nlogs in {run.log_dir}"
    assert len(refusals) == len(REFUSED), shown
    for case, refusal in zip(REFUSED, refusals):
        assert refusal.res == ta_proof.TEE_ERROR_SECURITY, shown
        assert any(LDELF_CALL[case] in line for line in refusal.ldelf), f"{case}:\n{shown}"
