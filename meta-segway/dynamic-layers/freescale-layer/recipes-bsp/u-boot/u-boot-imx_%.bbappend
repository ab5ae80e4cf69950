# i.MX U-Boot: FIT signature verification with the key required (the keyed DTB replaces the
# board DTB in the build tree so imx-mkimage packs the DTB that carries the key), A/B boot
# counting, locked console in the release flavour.
inherit segway_uboot
