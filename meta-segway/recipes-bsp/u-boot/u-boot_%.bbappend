# U-Boot for the QEMU machines: FIT signature verification with the key required, boot
# counting for A/B and a locked console in the release flavour.
inherit segway_uboot

SRC_URI:append:segway:qemuall = " file://segway-qemu-boot.cfg"
