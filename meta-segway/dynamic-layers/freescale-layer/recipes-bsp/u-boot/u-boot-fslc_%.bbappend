# i.MX U-Boot: FIT signature verification with the key required (the keyed DTB replaces the
# board DTB in the build tree so imx-mkimage packs the DTB that carries the key), A/B boot
# counting with slot switching, locked console in the release flavour.
inherit segway_uboot

FILESEXTRAPATHS:prepend:segway := "${THISDIR}/files:"
SRC_URI:append:segway = " file://segway-imx-boot.cfg"

# With UBOOT_PROVIDES_BOOT_CONTAINER = "1" (meta-freescale's imx-boot-container, the default for
# imx8mm-lpddr4-evk) binman packs flash.bin in do_compile, before segway_uboot puts the FIT key
# into u-boot.dtb. Run the same make again so binman repacks flash.bin from the keyed DTB, then
# refuse a flash.bin whose control DTB has no key: U-Boot from it would boot unsigned FITs.
do_segway_fslc_repack() {
    unset LDFLAGS
    unset CFLAGS
    unset CPPFLAGS
    for config in ${UBOOT_MACHINE}; do
        oe_runmake -C ${S} O=${B}/${config} ${UBOOT_MAKE_TARGET}
    done
}
do_segway_fslc_repack[doc] = "Repack flash.bin with binman after the FIT key went into U-Boot's DTB"

python do_segway_fslc_check_flash_bin() {
    import glob
    import os
    if "segway" not in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        return
    if d.getVar("UBOOT_PROVIDES_BOOT_CONTAINER") != "1":
        return
    # The key node under /signature is key-<hint> for RSA and <hint> for ECDSA; in the DTB's
    # structure block a node starts with the FDT_BEGIN_NODE token and its NUL-terminated name.
    hint = d.getVar("SEGWAY_FIT_KEY_NAME")
    markers = [b"\0\0\0\1" + name.encode() + b"\0" for name in ("key-" + hint, hint)]
    images = glob.glob(os.path.join(d.getVar("B"), "*", "flash.bin"))
    if not images:
        bb.fatal("segway-uboot: no flash.bin under %s" % d.getVar("B"))
    for image in images:
        with open(image, "rb") as f:
            data = f.read()
        if not any(marker in data for marker in markers):
            bb.fatal("segway-uboot: %s carries no FIT key (%s); U-Boot from it would boot unsigned FITs"
                     % (image, hint))
}
do_segway_fslc_check_flash_bin[vardeps] += "SEGWAY_FIT_KEY_NAME UBOOT_PROVIDES_BOOT_CONTAINER"
do_segway_fslc_check_flash_bin[doc] = "Refuse a flash.bin whose U-Boot DTB lacks the FIT key"

python () {
    # Only the boot container needs repacking; other i.MX machines deploy u-boot.bin directly.
    if "segway" not in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        return
    if d.getVar("UBOOT_PROVIDES_BOOT_CONTAINER") == "1":
        bb.build.addtask("do_segway_fslc_repack", "do_deploy", "do_segway_uboot_pubkey", d)
        bb.build.addtask("do_segway_fslc_check_flash_bin", "do_deploy", "do_segway_fslc_repack", d)
}
