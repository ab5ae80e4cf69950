# Host keys on the data partition instead of /var/run/ssh (tmpfs) on the read-only root, so the
# device keeps its SSH identity across reboots.
FILESEXTRAPATHS:prepend:segway := "${THISDIR}/files:"
SRC_URI:append:segway = " \
    file://segway-ssh.default \
    file://sshdgenkeys-data.conf \
"

SEGWAY_SSH_HOSTKEY_DIR = "/data/ssh"

do_install:append:segway() {
    # sshd_check_keys generates the keys named by HostKey in the config sshd runs with.
    sed -i -e 's:^HostKey ${localstatedir}/run/ssh/:HostKey ${SEGWAY_SSH_HOSTKEY_DIR}/:' ${D}${sysconfdir}/ssh/sshd_config_readonly
    install -D -m 0644 ${UNPACKDIR}/segway-ssh.default ${D}${sysconfdir}/default/ssh
    install -D -m 0644 ${UNPACKDIR}/sshdgenkeys-data.conf \
        ${D}${systemd_system_unitdir}/sshdgenkeys.service.d/segway-data.conf
}

FILES:${PN}-sshd:append:segway = " \
    ${sysconfdir}/default/ssh \
    ${systemd_system_unitdir}/sshdgenkeys.service.d/segway-data.conf \
"
