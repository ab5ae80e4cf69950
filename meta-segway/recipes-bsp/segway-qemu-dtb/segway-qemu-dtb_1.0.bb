SUMMARY = "QEMU virt device tree carrying the FIT public key for U-Boot"
DESCRIPTION = "U-Boot on meta-arm's qemuarm64-secureboot and qemuarm-secureboot is built with \
               CONFIG_OF_BOARD: it runs with the device tree QEMU generates, not with a u-boot.dtb \
               of its own, so the key added to u-boot.dtb never reaches it. This recipe dumps the \
               tree QEMU generates for the machine's runqemu options, adds the FIT public key of the \
               pinned certificate with required = conf, and deploys it; runqemu passes it with -dtb \
               (conf/distro/include/segway-qemu.inc)."
HOMEPAGE = "https://example.org/segway"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy nopackages segway_sign

DEPENDS += "qemu-system-native"

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

# The runqemu options that shape the generated tree: machine properties (secure=on adds the
# secure-world nodes), CPU, CPU count, RAM, firmware present (with -bios the aarch64 virt machine
# drops the PL061 GPIO), and runqemu's two serial ports. Devices runqemu adds on PCI
# (QB_OPT_APPEND, network, graphics) are not in the tree, so the dump runs without a NIC and
# needs no option ROM.
SEGWAY_QEMU_DUMPDTB_ARGS = "${QB_MACHINE},dumpdtb=${B}/qemu-virt.dtb ${QB_CPU} ${QB_SMP} ${QB_MEM} \
                            -bios ${B}/firmware-placeholder.bin -serial null -serial null \
                            -display none -monitor none -nic none"

B = "${WORKDIR}/build"
do_compile[cleandirs] = "${B}"
do_fetch[noexec] = "1"
do_unpack[noexec] = "1"
do_patch[noexec] = "1"
do_configure[noexec] = "1"
do_install[noexec] = "1"

do_compile() {
    # QEMU only needs a firmware file to load; its content does not change the tree.
    dd if=/dev/zero of=${B}/firmware-placeholder.bin bs=1024 count=64
    ${QB_SYSTEM_NAME} ${SEGWAY_QEMU_DUMPDTB_ARGS}
    test -s ${B}/qemu-virt.dtb
}
do_compile[vardeps] += "SEGWAY_QEMU_DUMPDTB_ARGS QB_SYSTEM_NAME"

python do_segway_qemu_dtb_pubkey() {
    import os
    b = d.getVar("B")
    segway_add_fit_pubkey(d, os.path.join(b, "qemu-virt.dtb"), os.path.join(b, d.getVar("SEGWAY_QEMU_DTB")))
}
do_segway_qemu_dtb_pubkey[vardeps] += "SEGWAY_QEMU_DTB SEGWAY_FIT_KEY_NAME ${@segway_cert_vardeps('SEGWAY_FIT_CERT')}"
do_segway_qemu_dtb_pubkey[doc] = "Add the FIT public key (required = conf) to QEMU's device tree"
addtask segway_qemu_dtb_pubkey after do_compile before do_deploy

do_deploy() {
    install -m 0644 ${B}/${SEGWAY_QEMU_DTB} ${DEPLOYDIR}/${SEGWAY_QEMU_DTB}
}
addtask deploy after do_segway_qemu_dtb_pubkey before do_build

python () {
    if d.getVar("SEGWAY_QEMU_KEYED_DTB") != "1":
        raise bb.parse.SkipRecipe("only for QEMU machines whose U-Boot takes QEMU's device tree (SEGWAY_QEMU_KEYED_DTB)")
}
