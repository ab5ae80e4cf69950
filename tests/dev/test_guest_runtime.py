"""The device runtime under QEMU: the signed chain boots the runtime root (Debian arm64 under
systemd, the layer's units), and segway-kmsd runs in it on OP-TEE's PKCS#11 TA and on a TPM.

Everything the guest makes is checked on the host by tools we did not write (openssl) or by the
verifier the fleet uses (``segway-kmsctl attest verify`` with swtpm's EK chain). The TPM is the
host's swtpm reached through tpm2-tss's swtpm TCTI over QEMU's guestfwd: this guest has no
/dev/tpmrm0 (Debian's arm64 kernels have no MMIO TPM driver), so the kernel's resource manager is
the one TPM path not exercised here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from segway_dev import guest, guest_system, host_tpm
from tests import oeqa_cases
from tests.kms.server.test_rbac import ALL, matrix_failures
from tests.kms.server.test_rbac import _requests as rbac_requests

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CTL = "segway-kmsctl --socket /run/segway-kms/admin.sock"
KMSCTL_HOST = REPO / ".venv" / "bin" / "segway-kmsctl"
LAYER_CASES = REPO / "meta-segway/lib/oeqa/runtime/cases"
# The image's packages the cases ask for (OEHasPackage), all present in this root.
PACKAGES = {"segway-kms", "optee-client", "tpm2-tools", "openssh-sshd", "segway-hardening"}
# Cases that cannot pass in this guest, with the reason; every other case must pass.
NOT_HERE = {
    "segway_tee.SegwayTeeTest.test_tpmrm0_present":
        "fail: no /dev/tpmrm0: Debian's arm64 kernels have no MMIO TPM driver and the fTPM TA cannot be built here",
    "segway_tee.SegwayTeeTest.test_tpm2_getrandom": "skip: depends on segway_tee.SegwayTeeTest.test_tpmrm0_present",
}
TPM_DROP_IN = "/run/systemd/system/segway-kmsd.service.d/segway-dev-tpm.conf"


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "segway-dev-test", "-f", str(key)],
                   check=True)
    return key


@pytest.fixture(scope="module")
def device(signer):
    return guest.build_runtime_device(signer.root / "runtime", signer.root / "pki", signer, signer.pin,
                                      progress=lambda m: None)


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    t = host_tpm.HostTpm(tmp_path_factory.mktemp("tpm") / "state").start()
    yield t
    t.stop()


@pytest.fixture(scope="module")
def vm(device, tpm, ssh_key, tmp_path_factory):
    work = tmp_path_factory.mktemp("guest")
    data = guest_system.make_data_disk(work / "data.img", ssh_key.with_suffix(".pub").read_text())
    g = guest.Guest(device, data, ssh_key, tpm, work / "logs")
    g.start()
    yield g
    g.kill()


def sign_and_verify_on_host(vm, tmp_path: Path, name: str, algorithm: str) -> None:
    vm.check(f"{CTL} key generate {name} --algorithm {algorithm} --usage sign")
    stem = name.replace("/", "-")
    vm.check(f"rm -f /tmp/{stem}.*; printf 'segway device runtime' > /tmp/{stem}.msg && "
             f"{CTL} key sign {name} --input /tmp/{stem}.msg -o /tmp/{stem}.sig && "
             f"{CTL} key public {name} -o /tmp/{stem}.pem")
    for ext in ("msg", "sig", "pem"):
        vm.copy_from(f"/tmp/{stem}.{ext}", tmp_path / f"{stem}.{ext}")
    verify = ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / f"{stem}.pem"),
              "-signature", str(tmp_path / f"{stem}.sig")]
    ok = subprocess.run([*verify, str(tmp_path / f"{stem}.msg")], capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "other.msg").write_bytes(b"segway device runtimf")
    bad = subprocess.run([*verify, str(tmp_path / "other.msg")], capture_output=True, text=True)
    assert bad.returncode != 0, "a signature over other data verified"


def test_boots_the_runtime_root_under_systemd_with_the_layers_units(vm):
    mounts = vm.check("cat /proc/self/mounts")
    root = [line.split() for line in mounts.splitlines() if line.split()[1] == "/"][-1]
    assert root[0] == "/dev/mapper/rootfs" and "ro" in root[3].split(","), root
    assert "verity" in vm.check("dmsetup table rootfs")
    assert vm.check("test -c /dev/tee0 && systemctl is-active tee-supplicant@teepriv0.service ssh.service") \
        .split() == ["active", "active"]
    # The layer's files, not copies: the unit and its drop-ins as systemd loaded them.
    unit = vm.check("systemctl cat segway-kmsd.service")
    for rel in ("kms/conf/segway-kmsd.service",
                "meta-segway/recipes-security/segway-kms/files/segway-kmsd-image.conf"):
        body = "\n".join(line for line in (REPO / rel).read_text().splitlines() if line and not line.startswith("#"))
        assert all(line in unit for line in body.splitlines()), rel
    # OP-TEE's REE file system on /data, as the layer's tee-supplicant configuration puts it.
    assert vm.check("stat -c '%U %a' /data/tee") == "root 700"


def test_kms_on_the_pkcs11_ta_signs_and_issues_what_the_host_verifies(vm, tmp_path):
    vm.check(guest.provision_script(), timeout=300)
    vm.check("systemctl reset-failed segway-kmsd.service; systemctl restart --no-block segway-kmsd.service")
    vm.wait_kms_serving()
    props = dict(line.split("=", 1) for line in
                 vm.check("systemctl show -p Type -p User -p ActiveState segway-kmsd.service").splitlines())
    assert props == {"Type": "notify", "User": "segway-kms", "ActiveState": "active"}, props
    # The token is OP-TEE's PKCS#11 TA, reached through libckteec and /dev/tee0.
    slots = vm.check(f"pkcs11-tool --module {guest_system.LIBCKTEEC} --list-slots")
    assert "OP-TEE PKCS11 TA" in slots and guest_system.TOKEN_LABEL in slots, slots
    sign_and_verify_on_host(vm, tmp_path, "device/ec", "EC_P256")
    sign_and_verify_on_host(vm, tmp_path, "device/rsa", "RSA_2048")
    # The CA's key is generated in the TA too; the host's openssl accepts what it issues.
    vm.check(f"rm -f /tmp/ca.pem /tmp/user.pem; {CTL} ca init --cn 'segway QEMU device CA' -o /tmp/ca.pem && "
             f"{CTL} ca issue device/alice --profile user --cn alice -o /tmp/user.pem")
    ca, user = vm.copy_from("/tmp/ca.pem", tmp_path / "ca.pem"), vm.copy_from("/tmp/user.pem", tmp_path / "user.pem")
    check = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(user)], capture_output=True, text=True)
    assert check.returncode == 0 and ": OK" in check.stdout, check.stdout + check.stderr


def test_keys_survive_kill_and_reboot(vm, tmp_path):
    before = vm.check(f"{CTL} key list device")
    assert "device/ec" in before
    vm.check("systemctl kill -s KILL segway-kmsd.service")
    vm.wait_kms_serving()
    assert "device/ec" in vm.check(f"{CTL} key list device")
    vm.stop()
    vm.start()
    vm.wait_kms_serving()
    assert "device/ec" in vm.check(f"{CTL} key list device")
    # The key in the TA still signs after the reboot (secure storage on /data, REE FS).
    vm.check(f"printf again > /tmp/again && {CTL} key sign device/ec --input /tmp/again -o /tmp/again.sig && "
             f"{CTL} key public device/ec -o /tmp/again.pem && "
             "openssl dgst -sha256 -verify /tmp/again.pem -signature /tmp/again.sig /tmp/again")


# Over mTLS the principal is the client certificate's first SAN: kms/conf/segway-kms.yaml makes
# ops@example.com operator of every tenant; nobody@example.com has no entry at all.
MTLS_ALLOWED = {
    "ops": ALL - {"DestroyKey", "InitCa", "InstallCaCertificate", "ExportAudit"},
    "nobody": set(),
}


def _client_identity(tmp_path: Path, vm, who: str) -> tuple[bytes, bytes]:
    """A key made on the host and its certificate from the guest's CA (profile client)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)]))
           .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(who)]), critical=False)
           .sign(key, hashes.SHA256()))
    stem = who.split("@")[0]
    vm.copy_to(csr.public_bytes(serialization.Encoding.PEM), f"/tmp/{stem}.csr", mode="0644")
    vm.check(f"rm -f /tmp/{stem}.crt; {CTL} ca sign-csr /tmp/{stem}.csr --profile client -o /tmp/{stem}.crt")
    cert = vm.copy_from(f"/tmp/{stem}.crt", tmp_path / f"{stem}.crt").read_bytes()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), cert


def test_rbac_denial_matrix_over_mtls_from_the_host(vm, tmp_path):
    import grpc
    from segway_kms.api import kms_pb2_grpc

    vm.check(f"{CTL} key generate acme/base && " + " && ".join(
        f"{CTL} key generate acme/{kind}-{who}" for who in MTLS_ALLOWED for kind in ("toggle", "victim")),
        timeout=900)
    vm.check(f"rm -f /tmp/ca.pem; {CTL} ca cert -o /tmp/ca.pem")
    ca = vm.copy_from("/tmp/ca.pem", tmp_path / "ca.pem").read_bytes()
    failures = []
    for who, allowed in MTLS_ALLOWED.items():
        key, cert = _client_identity(tmp_path, vm, f"{who}@example.com")
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        with grpc.secure_channel(f"127.0.0.1:{vm.kms_port}", creds,
                                 options=[("grpc.ssl_target_name_override", "kms.local")]) as channel:
            stub = kms_pb2_grpc.KmsStub(channel)
            requests = rbac_requests(who)
            assert set(requests) == ALL
            failures += matrix_failures(who, stub, requests, allowed, timeout=120)
    assert not failures, failures


def test_layers_oeqa_cases_in_the_guest(vm):
    target = oeqa_cases.Target(lambda cmd, timeout: vm.run(cmd, timeout))
    outcomes = {}
    for case in sorted(LAYER_CASES.glob("*.py")):
        outcomes.update(oeqa_cases.run_cases(case, target, PACKAGES))
    assert len(outcomes) >= 9, outcomes
    for test_id, expected in NOT_HERE.items():
        assert outcomes[test_id].split(":")[0] == expected.split(":")[0], (test_id, outcomes[test_id])
    failed = {t: o for t, o in outcomes.items() if t not in NOT_HERE and o != "pass"}
    assert not failed, failed


def test_kms_on_the_tpm_with_attestation_verified_on_the_host(vm, tpm, tmp_path):
    # The TPM path the image's case cannot take here: tpm2-tools through the swtpm TCTI.
    assert len(vm.check(f"tpm2_getrandom -T {guest_system.TPM_TCTI} --hex 16")) == 32
    vm.check(f"install -d -o segway-kms -g segway-kms -m 0700 /data/segway-kms/tpm && "
             f"mkdir -p {Path(TPM_DROP_IN).parent} && printf '[Service]\\nExecStart=\\n"
             f"ExecStart=/usr/bin/segway-kmsd --config /etc/segway-kms/segway-kms-tpm.yaml\\n' > {TPM_DROP_IN} && "
             "systemctl daemon-reload && systemctl restart --no-block segway-kmsd.service")
    vm.wait_kms_serving()
    assert "segway-kms-tpm.yaml" in vm.check("systemctl show -p ExecStart --value segway-kmsd.service")
    sign_and_verify_on_host(vm, tmp_path, "device/tpm-ec", "EC_P256")
    sign_and_verify_on_host(vm, tmp_path, "device/tpm-rsa", "RSA_2048")
    vm.check(f"rm -f /tmp/evidence.json; {CTL} attest key device/tpm-ec -o /tmp/evidence.json", timeout=300)
    evidence = vm.copy_from("/tmp/evidence.json", tmp_path / "evidence.json")
    assert tpm.ek_chain
    (tmp_path / "ek-ca.pem").write_bytes(tpm.ek_chain)
    res = subprocess.run([str(KMSCTL_HOST), "attest", "verify", str(evidence), "--ek-ca", str(tmp_path / "ek-ca.pem")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "attestation OK" in res.stdout + res.stderr, res.stdout + res.stderr


def test_no_private_key_in_the_clear_on_data_and_a_wiped_data_loses_the_token(vm, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def key_and_scalar():
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return der, key.private_numbers().private_value.to_bytes(32, "big")

    sealed_der, sealed_scalar = key_and_scalar()
    plain_der, plain_scalar = key_and_scalar()
    # Into the TA as a sensitive object (through /tmp, a tmpfs: never on the data disk), ...
    vm.copy_to(sealed_der, "/tmp/probe.der")
    vm.check(f"SEGWAY_USER_PIN=$(cat {guest_system.TOKEN_PIN_FILE}) pkcs11-tool --module {guest_system.LIBCKTEEC} "
             f"--token-label {guest_system.TOKEN_LABEL} --login --pin env:SEGWAY_USER_PIN --write-object /tmp/probe.der "
             "--type privkey --id 5ca7 --label disk-scan-probe --sensitive && rm /tmp/probe.der")
    objects = vm.check(f"SEGWAY_USER_PIN=$(cat {guest_system.TOKEN_PIN_FILE}) pkcs11-tool --module "
                       f"{guest_system.LIBCKTEEC} --token-label {guest_system.TOKEN_LABEL} --login "
                       "--pin env:SEGWAY_USER_PIN --list-objects --type privkey")
    assert "disk-scan-probe" in objects and "sensitive" in objects, objects
    # ... and, as the control, a plain key file on /data.
    vm.copy_to(plain_der, "/data/plain-key.der")
    vm.check("sync")
    vm.stop()
    disk = vm.data_disk.read_bytes()
    assert plain_scalar in disk, "the control key's scalar is not on the data disk: the scan sees nothing"
    assert sealed_scalar not in disk, "the TA's sensitive key is on the data disk in the clear"

    # A wiped /data (REE FS, no RPMB here): OP-TEE's secure storage and the token are gone with it.
    vm.data_disk = guest_system.make_data_disk(tmp_path / "wiped-data.img", vm.ssh_key.with_suffix(".pub").read_text())
    vm.start()
    slots = vm.check(f"pkcs11-tool --module {guest_system.LIBCKTEEC} --list-slots")
    assert guest_system.TOKEN_LABEL not in slots, slots
    assert vm.run(f"test -e {guest_system.TOKEN_PIN_FILE}")[0] != 0
    assert vm.run(f"{CTL} health", timeout=120)[0] != 0
