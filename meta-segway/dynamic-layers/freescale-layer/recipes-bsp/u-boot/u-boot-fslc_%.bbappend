# i.MX U-Boot: FIT signature verification with the key required (the keyed DTB replaces the
# board DTB in the build tree so imx-mkimage packs the DTB that carries the key), A/B boot
# counting with slot switching, locked console in the release flavour.
inherit segway_uboot

FILESEXTRAPATHS:prepend:segway := "${THISDIR}/files:"
SRC_URI:append:segway = " file://segway-imx-boot.cfg"
