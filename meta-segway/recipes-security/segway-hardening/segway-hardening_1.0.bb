SUMMARY = "segway runtime hardening: sysctls, SSH policy, service sandboxing"
DESCRIPTION = "Hardened sysctls, an sshd policy (key-only, no root login), a sandbox drop-in for \
               tee-supplicant and the data-partition directories OP-TEE needs on a read-only root."
HOMEPAGE = "https://example.org/segway"
SECTION = "security"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://90-segway.conf \
    file://segway-sshd.conf \
    file://tee-supplicant-hardening.conf \
    file://segway-hardening.tmpfiles \
"
S = "${UNPACKDIR}"

inherit allarch features_check
REQUIRED_DISTRO_FEATURES = "systemd"

# Owner of OP-TEE's REE file system: meta-arm's optee-client runs tee-supplicant as root on
# scarthgap and as its own user "teesuppl" from wrynose on.
SEGWAY_TEE_SUPPL_USER ?= "${@'root' if 'scarthgap' in (d.getVar('LAYERSERIES_CORENAMES') or '').split() else 'teesuppl'}"

do_install() {
    install -D -m 0644 ${UNPACKDIR}/90-segway.conf ${D}${sysconfdir}/sysctl.d/90-segway.conf
    install -D -m 0644 ${UNPACKDIR}/segway-sshd.conf ${D}${sysconfdir}/ssh/sshd_config.d/00-segway.conf
    install -D -m 0644 ${UNPACKDIR}/tee-supplicant-hardening.conf \
        ${D}${systemd_system_unitdir}/tee-supplicant@.service.d/segway-hardening.conf
    install -D -m 0644 ${UNPACKDIR}/segway-hardening.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/segway-hardening.conf
    sed -i -e 's:@TEE_SUPPL_USER@:${SEGWAY_TEE_SUPPL_USER}:g' ${D}${nonarch_libdir}/tmpfiles.d/segway-hardening.conf
}

FILES:${PN} += "\
    ${sysconfdir}/sysctl.d/90-segway.conf \
    ${sysconfdir}/ssh/sshd_config.d/00-segway.conf \
    ${systemd_system_unitdir}/tee-supplicant@.service.d/segway-hardening.conf \
    ${nonarch_libdir}/tmpfiles.d/segway-hardening.conf \
"
