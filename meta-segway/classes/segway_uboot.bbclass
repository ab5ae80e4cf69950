# segway_uboot.bbclass - U-Boot that only boots signed FITs.
#
# - Kconfig fragments: FIT signature verification (legacy images off), boot counting for A/B,
#   altbootcmd switching boot_slot (set from preboot), and in the release flavour a locked
#   console (no autoboot interruption, only the A/B variables writeable in the stored env).
# - do_segway_uboot_pubkey: after compiling, the FIT public key from the pinned certificate
#   (SEGWAY_FIT_CERT, both signing modes) is added to U-Boot's control DTB with required = "conf",
#   and u-boot.bin is re-assembled from u-boot-nodtb.bin + the keyed DTB. Every copy of the
#   original DTB in the build tree (dts/dt.dtb, arch/arm/dts/<board>.dtb) is replaced so packers
#   such as imx-mkimage pick up the DTB that carries the key.
# - SEGWAY_UBOOT_CONTROL_DTB (QEMU secure-boot machines): a control tree that already carries the
#   key (segway-qemu-dtb's run-time tree); it replaces u-boot.dtb and is appended to
#   u-boot-nodtb.bin (CONFIG_OF_SEPARATE required), so the key is inside U-Boot itself.

inherit segway_sign

FILESEXTRAPATHS:prepend := "${SEGWAY_LAYERDIR}/recipes-bsp/u-boot/files:"

# Tied to the segway distro override, so the layer leaves other distros alone.
SRC_URI:append:segway = " \
    file://segway-fit-verify.cfg \
    file://segway-bootcount.cfg \
    ${@'file://segway-console-locked.cfg file://segway-env-flags.h' if d.getVar('SEGWAY_UBOOT_CONSOLE_LOCKED') == '1' else ''} \
"
# The writeable-variable list of the locked environment is a C define, not a Kconfig symbol:
# force-include it into every U-Boot object (KCFLAGS is added to KBUILD_CFLAGS by U-Boot's Makefile).
SEGWAY_UBOOT_KCFLAGS = "${@'-include ${UNPACKDIR}/segway-env-flags.h' if d.getVar('SEGWAY_UBOOT_CONSOLE_LOCKED') == '1' else ''}"
EXTRA_OEMAKE:append:segway = " KCFLAGS='${SEGWAY_UBOOT_KCFLAGS}'"

python do_segway_uboot_pubkey() {
    import glob
    import os
    import shutil
    if "segway" not in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        return

    b = d.getVar("B")
    dirs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(b, "u-boot.dtb")) +
                   glob.glob(os.path.join(b, "*", "u-boot.dtb"))})
    if not dirs:
        bb.fatal("segway-uboot: no u-boot.dtb under %s; U-Boot must be built with OF_CONTROL" % b)
    for bdir in dirs:
        dtb = os.path.join(bdir, "u-boot.dtb")
        with open(dtb, "rb") as f:
            original = f.read()
        keyed = os.path.join(bdir, "u-boot-segway-pubkey.dtb")
        control = d.getVar("SEGWAY_UBOOT_CONTROL_DTB")
        if control:
            segway_require_inputs("fit-pubkey", [control])
            shutil.copyfile(control, keyed)
        else:
            segway_add_fit_pubkey(d, dtb, keyed)
        with open(keyed, "rb") as f:
            keyed_bytes = f.read()
        for copy in [dtb, os.path.join(bdir, "dts", "dt.dtb")] + glob.glob(os.path.join(bdir, "arch", "*", "dts", "*.dtb")):
            if os.path.isfile(copy):
                with open(copy, "rb") as f:
                    same = f.read() == original
                if same:
                    shutil.copyfile(keyed, copy)
        nodtb = os.path.join(bdir, "u-boot-nodtb.bin")
        config = os.path.join(bdir, ".config")
        config_text = open(config).read() if os.path.isfile(config) else ""
        separate = "CONFIG_OF_SEPARATE=y" in config_text
        if "CONFIG_OF_BOARD=y" in config_text and d.getVar("SEGWAY_UBOOT_OF_BOARD_KEYED") != "1":
            # U-Boot runs with the DTB the previous stage hands over (QEMU's own on the QEMU machines),
            # not with the keyed u-boot.dtb: without the key there, bootm does not enforce signatures.
            bb.warn("segway-uboot: %s uses CONFIG_OF_BOARD; the FIT key is enforced only if the DTB "
                    "handed to U-Boot carries it (set SEGWAY_UBOOT_OF_BOARD_KEYED = \"1\" where it does)"
                    % d.getVar("MACHINE"))
        if control and not separate:
            bb.fatal("segway-uboot: SEGWAY_UBOOT_CONTROL_DTB needs CONFIG_OF_SEPARATE=y in %s" % config)
        if separate and os.path.isfile(nodtb):
            with open(nodtb, "rb") as f:
                image = f.read()
            if len(image) % 8:
                bb.fatal("segway-uboot: %s is not 8-byte aligned; U-Boot would not find its device tree" % nodtb)
            image += keyed_bytes
            for target in [os.path.join(bdir, "u-boot.bin")] + glob.glob(os.path.join(bdir, "%s-*.%s" % (d.getVar("UBOOT_BINARYNAME"), d.getVar("UBOOT_SUFFIX")))):
                with open(target + ".tmp", "wb") as f:
                    f.write(image)
                os.replace(target + ".tmp", target)
}
do_segway_uboot_pubkey[vardeps] += "SEGWAY_FIT_KEY_NAME SEGWAY_UBOOT_OF_BOARD_KEYED SEGWAY_UBOOT_CONTROL_DTB ${@segway_cert_vardeps('SEGWAY_FIT_CERT')}"
do_segway_uboot_pubkey[doc] = "Add the FIT public key (required = conf) to U-Boot's control DTB"
addtask segway_uboot_pubkey after do_compile before do_install do_deploy
