# STM32MP1 U-Boot: FIT signature verification with the key required, A/B boot counting,
# locked console in the release flavour.
inherit segway_uboot
