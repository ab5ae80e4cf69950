SUMMARY = "Root SSH key access for oeqa runtime tests (kas/testimage.yml only)"
DESCRIPTION = "testimage logs in as root over SSH. segway images lock root, so test images \
               authorize one public key (SEGWAY_TEST_SSH_PUBKEY, the test runner's key) for root, key-only. \
               Never part of a release image: segway-sanity refuses it in the release flavour."
HOMEPAGE = "https://example.org/segway"
SECTION = "devel"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit allarch

SEGWAY_TEST_SSH_PUBKEY ??= ""

do_install[vardeps] += "SEGWAY_TEST_SSH_PUBKEY"
do_install[file-checksums] += "${SEGWAY_TEST_SSH_PUBKEY}:False"

python do_install() {
    import os
    key = d.getVar("SEGWAY_TEST_SSH_PUBKEY")
    if not key or not os.path.isfile(key):
        bb.fatal("segway-test-access: SEGWAY_TEST_SSH_PUBKEY must name the test runner's SSH public key file")
    dest = d.expand("${D}${ROOT_HOME}/.ssh")
    os.makedirs(dest, mode=0o700)
    with open(key) as f, open(os.path.join(dest, "authorized_keys"), "w") as out:
        out.write(f.read())
    os.chmod(os.path.join(dest, "authorized_keys"), 0o600)
    conf = d.expand("${D}${sysconfdir}/ssh/sshd_config.d")
    os.makedirs(conf)
    # Sorts before 00-segway.conf, and sshd keeps the first value it reads.
    with open(os.path.join(conf, "0-segway-test.conf"), "w") as out:
        out.write("# oeqa test image only: root may log in with the test key, never with a password.\n")
        out.write("PermitRootLogin prohibit-password\n")
    with open(d.expand("${D}${sysconfdir}/segway-test-image"), "w") as out:
        out.write("oeqa test image\n")
}

FILES:${PN} += "${ROOT_HOME}/.ssh ${sysconfdir}/ssh/sshd_config.d/0-segway-test.conf ${sysconfdir}/segway-test-image"
