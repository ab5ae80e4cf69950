SUMMARY = "QEMU virt device trees: U-Boot's control tree with the FIT key, the kernel's"
DESCRIPTION = "Dumps the tree QEMU generates for the machine's runqemu options, drops QEMU's per-boot \
               seeds and adds the nodes TF-A and OP-TEE add at run time (SEGWAY_QEMU_RUNTIME_DTSI): the \
               run-time tree, which segway-fit-image signs into the FIT for the kernel. The same tree \
               with the FIT public key of the pinned certificate (required = conf) is U-Boot's control \
               tree, appended to u-boot-nodtb.bin (CONFIG_OF_SEPARATE, segway_uboot.bbclass), so the \
               key is part of BL33 rather than a -dtb QEMU is started with."
HOMEPAGE = "https://example.org/segway"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy nopackages segway_sign

DEPENDS += "dtc-native qemu-system-native"

SRC_URI:append:qemuarm64-secureboot = " file://segway-qemu-runtime-qemuarm64-secureboot.dtsi"

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

# The nodes TF-A and OP-TEE add at run time, measured on the harness's chain for
# qemuarm64-secureboot. None for qemuarm-secureboot: its AArch32 chain (OP-TEE as the secure payload)
# has not been measured, so its kernel tree is QEMU's alone (docs/yocto-layer.md).
SEGWAY_QEMU_RUNTIME_DTSI ?= ""
SEGWAY_QEMU_RUNTIME_DTSI:qemuarm64-secureboot ?= "${UNPACKDIR}/segway-qemu-runtime-qemuarm64-secureboot.dtsi"

B = "${WORKDIR}/build"
do_compile[cleandirs] = "${B}"
do_patch[noexec] = "1"
do_configure[noexec] = "1"
do_install[noexec] = "1"

do_compile() {
    # QEMU only needs a firmware file to load; its content does not change the tree.
    dd if=/dev/zero of=${B}/firmware-placeholder.bin bs=1024 count=64
    ${QB_SYSTEM_NAME} ${SEGWAY_QEMU_DUMPDTB_ARGS}
    test -s ${B}/qemu-virt.dtb
    # QEMU's per-boot randomness: never freeze it into a signed tree.
    for node in /chosen /secure-chosen; do
        for prop in kaslr-seed rng-seed; do
            if fdtget ${B}/qemu-virt.dtb $node $prop >/dev/null 2>&1; then
                fdtput -d ${B}/qemu-virt.dtb $node $prop
            fi
        done
    done
    dtc -q -I dtb -O dts -o ${B}/runtime.dts ${B}/qemu-virt.dtb
    if [ -n "${SEGWAY_QEMU_RUNTIME_DTSI}" ]; then
        cat ${SEGWAY_QEMU_RUNTIME_DTSI} >> ${B}/runtime.dts
        for cpu in $(fdtget -l ${B}/qemu-virt.dtb /cpus | grep '^cpu@'); do
            printf '&{/cpus/%s} {\n\tenable-method = "psci";\n};\n' $cpu >> ${B}/runtime.dts
        done
    fi
    dtc -q -I dts -O dtb -o ${B}/${SEGWAY_QEMU_RUNTIME_DTB} ${B}/runtime.dts
}
do_compile[vardeps] += "SEGWAY_QEMU_DUMPDTB_ARGS QB_SYSTEM_NAME SEGWAY_QEMU_RUNTIME_DTSI SEGWAY_QEMU_RUNTIME_DTB"

python do_segway_qemu_dtb_pubkey() {
    import os
    b = d.getVar("B")
    segway_add_fit_pubkey(d, os.path.join(b, d.getVar("SEGWAY_QEMU_RUNTIME_DTB")), os.path.join(b, d.getVar("SEGWAY_QEMU_DTB")))
}
do_segway_qemu_dtb_pubkey[vardeps] += "SEGWAY_QEMU_DTB SEGWAY_FIT_KEY_NAME ${@segway_cert_vardeps('SEGWAY_FIT_CERT')}"
do_segway_qemu_dtb_pubkey[doc] = "Add the FIT public key (required = conf) to the run-time tree: U-Boot's control tree"
addtask segway_qemu_dtb_pubkey after do_compile before do_deploy

do_deploy() {
    install -m 0644 ${B}/${SEGWAY_QEMU_DTB} ${DEPLOYDIR}/${SEGWAY_QEMU_DTB}
    install -m 0644 ${B}/${SEGWAY_QEMU_RUNTIME_DTB} ${DEPLOYDIR}/${SEGWAY_QEMU_RUNTIME_DTB}
}
addtask deploy after do_segway_qemu_dtb_pubkey before do_build

python () {
    if d.getVar("SEGWAY_QEMU_KEYED_DTB") != "1":
        raise bb.parse.SkipRecipe("only for the QEMU secure-boot machines (SEGWAY_QEMU_KEYED_DTB)")
}
