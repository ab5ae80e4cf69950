# U-Boot for the QEMU machines: FIT signature verification with the key required, boot
# counting for A/B and a locked console in the release flavour.
inherit segway_uboot

SRC_URI:append:segway:qemuall = " file://segway-qemu-boot.cfg"
# The control tree with the FIT key is built into U-Boot (CONFIG_OF_SEPARATE): segway-qemu-dtb's
# run-time tree with the key, appended to u-boot-nodtb.bin. runqemu passes no -dtb.
SRC_URI:append:segway:qemuarm64-secureboot = " file://segway-qemu-chain.cfg"
SRC_URI:append:segway:qemuarm-secureboot = " file://segway-qemu-chain.cfg"
SEGWAY_UBOOT_CONTROL_DTB = "${@'${DEPLOY_DIR_IMAGE}/${SEGWAY_QEMU_DTB}' if d.getVar('SEGWAY_QEMU_KEYED_DTB') == '1' else ''}"
do_segway_uboot_pubkey[depends] += "${@'segway-qemu-dtb:do_deploy' if d.getVar('SEGWAY_QEMU_KEYED_DTB') == '1' else ''}"

# The hardened kernel command line (SEGWAY_KERNEL_CMDLINE) goes into the QEMU boot command. The
# fetched fragment stays as the template: do_configure can run again without a new unpack.
SEGWAY_UBOOT_KERNEL_CMDLINE = "${@' '.join((d.getVar('SEGWAY_KERNEL_CMDLINE') or '').split())}"
do_configure:prepend:segway:qemuall() {
    if [ ! -f ${UNPACKDIR}/segway-qemu-boot.cfg.in ]; then
        cp ${UNPACKDIR}/segway-qemu-boot.cfg ${UNPACKDIR}/segway-qemu-boot.cfg.in
    fi
    sed -e 's|@SEGWAY_KERNEL_CMDLINE@|${SEGWAY_UBOOT_KERNEL_CMDLINE}|' \
        ${UNPACKDIR}/segway-qemu-boot.cfg.in > ${UNPACKDIR}/segway-qemu-boot.cfg
}
do_configure[vardeps] += "SEGWAY_UBOOT_KERNEL_CMDLINE"
