# STM32MP1 U-Boot: FIT signature verification with the key required, A/B boot counting with
# slot switching, locked console in the release flavour.
inherit segway_uboot

FILESEXTRAPATHS:prepend:segway := "${THISDIR}/files:"
SRC_URI:append:segway = " file://segway-stm32mp-boot.cfg"

# ST's recipe copies the control DTB to <config>/u-boot-<device tree>.dtb in do_compile:append,
# and that copy is what the FIP carries as hw-config (fip-utils-stm32mp.bbclass) and what U-Boot
# runs with (CONFIG_OF_BOARD: the tree TF-A passes). The keyed DTB must replace it, or the FIT key
# never reaches the board. Only one device tree can carry it: u-boot.dtb is the last one built.
python do_segway_stm32mp_keyed_dtb() {
    import glob
    import os
    import shutil
    if "segway" not in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        return
    trees = (d.getVar("UBOOT_DEVICETREE") or "").split()
    if len(trees) != 1:
        bb.fatal("segway-uboot: the FIT key goes into one U-Boot device tree; UBOOT_DEVICETREE is '%s'" % " ".join(trees))
    keyed_dtbs = glob.glob(os.path.join(d.getVar("B"), "*", "u-boot-segway-pubkey.dtb"))
    if not keyed_dtbs:
        bb.fatal("segway-uboot: no u-boot-segway-pubkey.dtb under %s" % d.getVar("B"))
    for keyed in keyed_dtbs:
        target = os.path.join(os.path.dirname(keyed), "u-boot-%s.dtb" % trees[0])
        if not os.path.isfile(target):
            bb.fatal("segway-uboot: %s is missing; the FIP would carry a DTB without the FIT key" % target)
        shutil.copyfile(keyed, target + ".tmp")
        os.replace(target + ".tmp", target)
}
do_segway_stm32mp_keyed_dtb[vardeps] += "UBOOT_DEVICETREE"
do_segway_stm32mp_keyed_dtb[doc] = "Put the keyed control DTB where the FIP takes U-Boot's DTB from"
addtask segway_stm32mp_keyed_dtb after do_segway_uboot_pubkey before do_deploy
# The keyed DTB is the one TF-A hands to U-Boot (OF_BOARD): see do_segway_stm32mp_keyed_dtb.
SEGWAY_UBOOT_OF_BOARD_KEYED = "1"
