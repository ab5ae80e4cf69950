# STM32MP1 U-Boot: FIT signature verification with the key required, A/B boot counting with
# slot switching, locked console in the release flavour.
inherit segway_uboot

FILESEXTRAPATHS:prepend:segway := "${THISDIR}/files:"
SRC_URI:append:segway = " file://segway-stm32mp-boot.cfg"
