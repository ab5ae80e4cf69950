# U-Boot for the QEMU machines: FIT signature verification with the key required, boot
# counting for A/B and a locked console in the release flavour.
inherit segway_uboot

SRC_URI:append:segway:qemuall = " file://segway-qemu-boot.cfg"
# The device tree QEMU hands to U-Boot carries the FIT key (segway-qemu-dtb, passed by runqemu).
SEGWAY_UBOOT_OF_BOARD_KEYED:qemuall = "${SEGWAY_QEMU_KEYED_DTB}"

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
