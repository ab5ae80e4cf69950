# U-Boot for the QEMU machines: FIT signature verification with the key required, boot
# counting for A/B and a locked console in the release flavour.
inherit segway_uboot

SRC_URI:append:segway:qemuall = " file://segway-qemu-boot.cfg"
# The device tree QEMU hands to U-Boot carries the FIT key (segway-qemu-dtb, passed by runqemu).
SEGWAY_UBOOT_OF_BOARD_KEYED:qemuall = "${SEGWAY_QEMU_KEYED_DTB}"
