SUMMARY = "Mark the running A/B slot good once the system is up"
DESCRIPTION = "A systemd unit that ends U-Boot's boot trial after an update (upgrade_available=0, \
               bootcount=0) with libubootenv's fw_setenv, and the machine's /etc/fw_env.config \
               describing where U-Boot keeps its environment."
HOMEPAGE = "https://example.org/segway"
SECTION = "bootloader"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# fw_env.config comes from the machine override directory (files/<override>/fw_env.config):
# qemuall, stm32mp15common, mx8mm-generic-bsp (meta-freescale filters the bare mx8mm override
# out). Other machines fail at fetch rather than guess an env offset.
SRC_URI = "\
    file://fw_env.config \
    file://segway-ab-boot-ok.service \
    file://segway-ab-boot-ok.env \
"
# NXP's u-boot-imx keeps its environment elsewhere than u-boot-fslc (meta-freescale's default for
# imx8mm-lpddr4-evk): with it, files/mx8mm-u-boot-imx/ comes first (the last FILESOVERRIDES entry
# is searched first).
FILESOVERRIDES .= "${@':mx8mm-u-boot-imx' if 'mx8mm-generic-bsp' in (d.getVar('MACHINEOVERRIDES') or '').split(':') and d.getVar('PREFERRED_PROVIDER_virtual/bootloader') == 'u-boot-imx' else ''}"
S = "${UNPACKDIR}"

inherit systemd features_check
REQUIRED_DISTRO_FEATURES = "systemd"

# The env location differs per board.
PACKAGE_ARCH = "${MACHINE_ARCH}"

SYSTEMD_SERVICE:${PN} = "segway-ab-boot-ok.service"

do_install() {
    install -D -m 0644 ${UNPACKDIR}/fw_env.config ${D}${sysconfdir}/fw_env.config
    install -D -m 0644 ${UNPACKDIR}/segway-ab-boot-ok.env ${D}${datadir}/segway/ab-boot-ok.env
    install -D -m 0644 ${UNPACKDIR}/segway-ab-boot-ok.service ${D}${systemd_system_unitdir}/segway-ab-boot-ok.service
    sed -i -e 's:@BINDIR@:${bindir}:g' -e 's:@DATADIR@:${datadir}:g' ${D}${systemd_system_unitdir}/segway-ab-boot-ok.service
}

FILES:${PN} += "${datadir}/segway/ab-boot-ok.env"
RDEPENDS:${PN} = "libubootenv-bin"
