"""SSH host keys on the data partition: on segway's read-only root, OE's openssh would keep them
in /var/run/ssh (tmpfs) and the device would present new keys after every boot."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .layer import LAYER, evaluate, import_bb, statements

APPEND = LAYER / "recipes-connectivity/openssh/openssh_%.bbappend"
FILES = APPEND.parent / "files"
HOSTKEY_DIR = "/data/ssh"
# What poky scarthgap's openssh_9.6p1.bb do_install writes for a read-only root.
OE_READONLY_HOSTKEYS = "".join("HostKey /var/run/ssh/ssh_host_%s_key\n" % t for t in ("rsa", "ecdsa", "ed25519"))
# What rootfs-postcommands.bbclass (read_only_rootfs_hook) appends to /etc/default/ssh.
OE_READONLY_DEFAULT = "SYSCONFDIR=${SYSCONFDIR:-/var/run/ssh}\nSSHD_OPTS='-f /etc/ssh/sshd_config_readonly'\n"


def install_append(tmp_path):
    """Run the bbappend's do_install:append on a ${D} holding OE's read-only sshd config."""
    bb = import_bb()
    dest, workdir = tmp_path / "image", tmp_path / "work"
    (dest / "etc/ssh").mkdir(parents=True)
    workdir.mkdir()
    for f in FILES.iterdir():
        shutil.copy(f, workdir)
    config = dest / "etc/ssh/sshd_config_readonly"
    config.write_text("Include /etc/ssh/sshd_config.d/*.conf\nUsePAM no\n" + OE_READONLY_HOSTKEYS)
    d = evaluate([APPEND], {"OVERRIDES": "segway", "PN": "openssh", "D": str(dest), "WORKDIR": str(workdir), "UNPACKDIR": str(workdir), "sysconfdir": "/etc", "localstatedir": "/var",
                            "systemd_system_unitdir": "/usr/lib/systemd/system"})
    for node in statements(APPEND):
        if isinstance(node, bb.parse.ast.MethodNode):
            node.eval(d)
    bb.data.expandKeys(d)
    script = d.getVar("do_install")
    assert script and script.strip(), "no do_install append for the segway distro"
    subprocess.run(["/bin/sh", "-ec", script], check=True)
    return dest, d


def test_readonly_config_names_host_keys_on_data(tmp_path):
    dest, _ = install_append(tmp_path)
    keys = re.findall(r"^HostKey (\S+)$", (dest / "etc/ssh/sshd_config_readonly").read_text(), re.M)
    assert keys == ["%s/ssh_host_%s_key" % (HOSTKEY_DIR, t) for t in ("rsa", "ecdsa", "ed25519")]


def test_sshd_reads_the_host_keys_from_data(tmp_path):
    """OpenSSH's own parser (sshd -T) on the installed config with segway's sshd policy."""
    sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin")
    if not sshd:
        pytest.skip("needs openssh-server (scripts/apt-packages.txt)")
    dest, _ = install_append(tmp_path)
    policy = LAYER / "recipes-security/segway-hardening/files/segway-sshd.conf"
    config = dest / "etc/ssh/sshd_config_readonly"
    config.write_text(config.read_text().replace("/etc/ssh/sshd_config.d/*.conf", str(policy)))
    # sshd -T needs one loadable key; the /data keys do not exist on this host.
    probe_key = tmp_path / "probe_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(probe_key)], check=True)
    argv = [sshd, "-T", "-f", str(config), "-o", "HostKey=%s" % probe_key]
    if not Path("/run/sshd").is_dir():
        # sshd insists on its privilege separation directory; give it one in a private mount
        # namespace instead of creating it on the host.
        probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /run"], capture_output=True)
        if probe.returncode:
            pytest.skip("no /run/sshd and no mount namespace to provide one")
        argv = ["unshare", "-m", "sh", "-ec", 'mount -t tmpfs tmpfs /run; mkdir /run/sshd; exec "$@"', "sh"] + argv
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    keys = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("hostkey ")]
    assert sorted(k for k in keys if k != str(probe_key)) == sorted(
        "%s/ssh_host_%s_key" % (HOSTKEY_DIR, t) for t in ("rsa", "ecdsa", "ed25519"))
    assert "permitrootlogin no" in result.stdout and "passwordauthentication no" in result.stdout


def test_key_generation_uses_data_after_the_image_hook(tmp_path):
    """sshd_check_keys sources /etc/default/ssh; the image's read-only hook appends its default
    after segway's file, and segway's value must survive it."""
    dest, _ = install_append(tmp_path)
    default = dest / "etc/default/ssh"
    default.write_text(default.read_text() + OE_READONLY_DEFAULT)
    out = subprocess.run(["/bin/sh", "-c", '. "$1"; echo "$SYSCONFDIR"', "sh", str(default)],
                         check=True, capture_output=True, text=True, env={}).stdout.strip()
    assert out == HOSTKEY_DIR


def test_key_generation_waits_for_the_data_partition(tmp_path):
    dest, d = install_append(tmp_path)
    dropin = dest / "usr/lib/systemd/system/sshdgenkeys.service.d/segway-data.conf"
    assert "RequiresMountsFor=/data" in dropin.read_text().split()
    packaged = d.getVar("FILES:openssh-sshd") or ""
    assert "/etc/default/ssh" in packaged and "sshdgenkeys.service.d/segway-data.conf" in packaged
    # /data is the writable partition of the image's disk layout.
    assert re.search(r"^part /data .*--fstype=ext4", (LAYER / "files/wic/segway-ab.wks.in").read_text(), re.M)
