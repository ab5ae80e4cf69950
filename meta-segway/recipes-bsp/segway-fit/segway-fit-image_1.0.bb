SUMMARY = "Signed FIT with the kernel, device trees and the verity initramfs"
DESCRIPTION = "Packs the kernel, the machine's device trees (with the hardened kernel command line \
               in /chosen) and segway-initramfs into one FIT and signs its configurations with segway-sign. \
               The signature is checked with U-Boot's fit_check_sign against a public-key DTB made from the pinned certificate."
HOMEPAGE = "https://example.org/segway"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy segway_sign

DEPENDS += "dtc-native u-boot-tools-native"

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

SEGWAY_INITRAMFS_IMAGE ?= "segway-initramfs"
SEGWAY_FIT_NAME ?= "segway-fit-${MACHINE}.itb"
SEGWAY_AB_SLOTS ?= "a b"
# arm64: U-Boot copies the Image to a 2 MiB-aligned load address (0x40400000 is 4 MiB into RAM on
# QEMU virt and on i.MX8M, below the FIT the boot commands load at 0x48000000/0x60000000). A
# kernel_noload Image would be moved by U-Boot itself (booti_setup): to the base of RAM before
# v2025.01, to the next 2 MiB boundary in place from v2025.01 on, over the initramfs behind it.
# 32-bit arm: the zImage is position independent and decompresses itself, so it runs in place.
SEGWAY_FIT_KERNEL_TYPE ?= "${@'kernel' if d.getVar('TARGET_ARCH') == 'aarch64' else 'kernel_noload'}"
SEGWAY_FIT_KERNEL_LOAD ?= "${@'0x40400000' if d.getVar('TARGET_ARCH') == 'aarch64' else '0'}"
SEGWAY_FIT_KERNEL_COMPRESSION ?= "none"
SEGWAY_FIT_ARCH ?= "${@'arm64' if d.getVar('TARGET_ARCH') == 'aarch64' else 'arm'}"

# QEMU secure-boot machines: the kernel's tree is the run-time tree (QEMU's, with the nodes TF-A and
# OP-TEE add) from segway-qemu-dtb, signed into the FIT as in the harness (device.py). U-Boot 2024.01
# passes no tree at all to a FIT configuration without one (boot/image-fdt.c: select_fdt returns
# -ENOPKG, boot_get_fdt goes to no_fdt and "continues without FDT"), and the tree QEMU left in RAM
# is not authenticated; U-Boot's own control tree (${fdtcontroladdr}) is the same tree but carries
# the FIT key node, so the signed copy without it is the one the kernel gets.
SEGWAY_FIT_RUNTIME_DTB ?= "${@'${SEGWAY_QEMU_RUNTIME_DTB}' if d.getVar('SEGWAY_QEMU_KEYED_DTB') == '1' else ''}"

do_compile[depends] += " \
    virtual/kernel:do_deploy \
    ${SEGWAY_INITRAMFS_IMAGE}:do_image_complete \
    ${@'segway-qemu-dtb:do_deploy' if d.getVar('SEGWAY_FIT_RUNTIME_DTB') else ''} \
"

B = "${WORKDIR}/build"
do_compile[cleandirs] = "${B}"
do_configure[noexec] = "1"
do_install[noexec] = "1"
do_fetch[noexec] = "1"
do_unpack[noexec] = "1"
do_patch[noexec] = "1"

def segway_fit_dtbs(d):
    if d.getVar("SEGWAY_FIT_RUNTIME_DTB"):
        return [d.getVar("SEGWAY_FIT_RUNTIME_DTB")]
    return [os.path.basename(dtb) for dtb in (d.getVar("KERNEL_DEVICETREE") or "").split()]

python do_compile() {
    import os
    import shutil
    import subprocess

    b = d.getVar("B")
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    env = {"PATH": d.getVar("PATH")}

    def run(cmd):
        bb.note("Running: %s" % " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=b, env=env)

    kernel = os.path.join(deploy, d.getVar("KERNEL_IMAGETYPE"))
    initramfs = None
    for fstype in (d.getVar("INITRAMFS_FSTYPES") or "cpio.gz").split():
        candidate = os.path.join(deploy, "%s-%s.%s" % (d.getVar("SEGWAY_INITRAMFS_IMAGE"), d.getVar("MACHINE"), fstype))
        if os.path.exists(candidate):
            initramfs = candidate
            break
    if initramfs is None:
        bb.fatal("segway-fit-image: no %s initramfs in %s" % (d.getVar("SEGWAY_INITRAMFS_IMAGE"), deploy))

    cmdline = " ".join((d.getVar("SEGWAY_KERNEL_CMDLINE") or "").split())
    slots = (d.getVar("SEGWAY_AB_SLOTS") or "a b").split()
    # One DTB copy per slot: the command line, including the root partition of that slot,
    # lives in the signed DTB, so it is covered by the configuration signature.
    dtbs = []
    for name in segway_fit_dtbs(d):
        src = os.path.join(deploy, name)
        if not os.path.exists(src):
            bb.fatal("segway-fit-image: device tree %s not deployed" % name)
        for slot in slots:
            dst = os.path.join(b, "%s-%s" % (slot, name))
            shutil.copyfile(src, dst)
            run(["fdtput", "-c", dst, "/chosen"])
            run(["fdtput", "-t", "s", dst, "/chosen", "bootargs",
                 "%s root=PARTLABEL=rootfs-%s segway.slot=%s" % (cmdline, slot, slot)])
            dtbs.append((name, slot, dst))
    # QEMU: U-Boot's boot command also sets bootargs (u-boot_%.bbappend), which U-Boot writes over
    # /chosen/bootargs of this signed tree; both come from SEGWAY_KERNEL_CMDLINE.

    arch = d.getVar("SEGWAY_FIT_ARCH")
    its = ['/dts-v1/;', '/ {',
           '    description = "segway kernel, device tree and verity initramfs";',
           '    #address-cells = <1>;', '    images {',
           '        kernel-1 {', '            description = "Linux kernel";',
           '            data = /incbin/("%s");' % kernel,
           '            type = "%s";' % d.getVar("SEGWAY_FIT_KERNEL_TYPE"),
           '            arch = "%s";' % arch, '            os = "linux";',
           '            compression = "%s";' % d.getVar("SEGWAY_FIT_KERNEL_COMPRESSION"),
           '            load = <%s>;' % d.getVar("SEGWAY_FIT_KERNEL_LOAD"),
           '            entry = <%s>;' % d.getVar("SEGWAY_FIT_KERNEL_LOAD"),
           '            hash-1 { algo = "sha256"; };', '        };',
           '        ramdisk-1 {', '            description = "segway initramfs";',
           '            data = /incbin/("%s");' % initramfs,
           '            type = "ramdisk";', '            arch = "%s";' % arch, '            os = "linux";',
           '            compression = "none";', '            hash-1 { algo = "sha256"; };', '        };']
    for i, (name, slot, dtb) in enumerate(dtbs, 1):
        its += ['        fdt-%d {' % i, '            description = "%s, slot %s";' % (name, slot),
                '            data = /incbin/("%s");' % dtb, '            type = "flat_dt";',
                '            arch = "%s";' % arch, '            compression = "none";',
                '            hash-1 { algo = "sha256"; };', '        };']
    confs = []
    if d.getVar("SEGWAY_FIT_RUNTIME_DTB"):
        # One tree per slot, configurations named as U-Boot's QEMU boot command boots them.
        confs = [("conf-%s" % slot, i) for i, (name, slot, dtb) in enumerate(dtbs, 1)]
    elif dtbs:
        for i, (name, slot, dtb) in enumerate(dtbs, 1):
            confs.append(("conf-%s-%s" % (os.path.splitext(name)[0], slot), i))
    else:
        confs = [("conf-%s" % slot, None) for slot in slots]
    its += ['    };', '    configurations {', '        default = "%s";' % confs[0][0]]
    for conf, fdt in confs:
        its += ['        %s {' % conf, '            kernel = "kernel-1";', '            ramdisk = "ramdisk-1";']
        if fdt:
            its += ['            fdt = "fdt-%d";' % fdt]
        its += ['            hash-1 { algo = "sha256"; };', '        };']
    its += ['    };', '};', '']
    with open(os.path.join(b, "segway-fit.its"), "w") as f:
        f.write("\n".join(its))
    run(["uboot-mkimage", "-f", "segway-fit.its", "unsigned.itb"])

    unsigned = os.path.join(b, "unsigned.itb")
    signed = os.path.join(b, d.getVar("SEGWAY_FIT_NAME"))
    argv = ["fit", "sign", "--key", d.getVar("SEGWAY_FIT_KEY_URI"), "--in", unsigned, "--out", signed,
            "--key-name-hint", d.getVar("SEGWAY_FIT_KEY_NAME"), "--algo", d.getVar("SEGWAY_FIT_SIGN_ALGO")]
    segway_sign(d, "fit", argv, [unsigned], signed, "SEGWAY_FIT_CERT")
    if d.getVar("SEGWAY_SIGN_MODE") == "deferred":
        return

    # Independent check with U-Boot's own verifier: a DTB holding only the public key of the
    # pinned certificate, marked required, must accept the FIT the token signed.
    with open(os.path.join(b, "empty.dts"), "w") as f:
        f.write("/dts-v1/;\n/ {\n};\n")
    run(["dtc", "-I", "dts", "-O", "dtb", "-o", "empty.dtb", "empty.dts"])
    pubkey = os.path.join(b, "pubkey.dtb")
    segway_add_fit_pubkey(d, os.path.join(b, "empty.dtb"), pubkey)
    run(["uboot-fit_check_sign", "-f", signed, "-k", pubkey])
}
do_compile[vardeps] += "SEGWAY_SIGN_MODE SEGWAY_FIT_KEY_URI SEGWAY_FIT_KEY_NAME SEGWAY_FIT_SIGN_ALGO \
                        SEGWAY_KERNEL_CMDLINE SEGWAY_AB_SLOTS SEGWAY_FIT_RUNTIME_DTB ${@segway_cert_vardeps('SEGWAY_FIT_CERT')}"
# The initramfs is rebuilt whenever the root file system (and so its root hash) changes.
do_compile[nostamp] = "1"

do_deploy() {
    install -m 0644 ${B}/${SEGWAY_FIT_NAME} ${DEPLOYDIR}/${SEGWAY_FIT_NAME}
    ln -sf ${SEGWAY_FIT_NAME} ${DEPLOYDIR}/fitImage-segway
    if [ -f ${B}/pubkey.dtb ]; then
        install -m 0644 ${B}/pubkey.dtb ${DEPLOYDIR}/segway-fit-pubkey-${MACHINE}.dtb
    fi
}
addtask deploy after do_compile before do_build
