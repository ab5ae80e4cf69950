SUMMARY = "Signed TF-A FIP and secure flash image for qemuarm64-secureboot"
DESCRIPTION = "Signs the FIP trusted-firmware-a deploys without certificates (GENERATE_COT=0) with \
               TF-A's generic TBBR chain of trust (segway-sign fip sign --cot generic, the six keys of \
               the ceremony in the token) and writes QEMU's secure flash image: BL1 at 0 and the signed \
               FIP at 0x40000, as TF-A's qemu_fw.bios and scripts/segway_dev do."
HOMEPAGE = "https://example.org/segway"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy segway_sign segway_fip

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"
COMPATIBLE_MACHINE = "qemuarm64-secureboot"

B = "${WORKDIR}/build"
do_fetch[noexec] = "1"
do_unpack[noexec] = "1"
do_patch[noexec] = "1"
do_configure[noexec] = "1"
do_install[noexec] = "1"

do_compile[depends] += " \
    trusted-firmware-a:do_deploy \
    openssl-native:do_populate_sysroot \
"
do_compile[cleandirs] = "${B} ${SEGWAY_FIP_ROTPK_DIR}"

# trusted-firmware-a's deploy names (TFA_INSTALL_TARGET "bl1 fip", PLAT=qemu); fip-qemu.bin is
# also the input of the fip step of conf/signing/qemuarm64.yaml.
SEGWAY_QEMU_BL1 ?= "bl1-qemu.bin"
SEGWAY_QEMU_FIP ?= "fip-qemu.bin"
# PLAT_QEMU_FIP_BASE - the flash base in TF-A's plat/qemu (chain.FIP_OFFSET in the harness).
SEGWAY_QEMU_FIP_OFFSET ?= "0x40000"
SEGWAY_QEMU_FLASH ?= "flash.bin"

python do_compile() {
    import os
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    b = d.getVar("B")
    bl1 = os.path.join(deploy, d.getVar("SEGWAY_QEMU_BL1"))
    fip = os.path.join(deploy, d.getVar("SEGWAY_QEMU_FIP"))
    segway_require_inputs("fip", [bl1, fip])
    signed = os.path.join(b, d.getVar("SEGWAY_QEMU_FIP"))
    segway_fip_sign_generic(d, fip, signed)
    if d.getVar("SEGWAY_SIGN_MODE") == "hsm":
        # The FIP must verify under the ROTPK hash BL1 and BL2 were built with (trusted-firmware-a
        # computes it from the same certificate).
        import subprocess
        cmd = ["segway-sign", "fip", "verify", "--cot", "generic", "--rot-pkh", segway_fip_rotpk(d), "--fip", signed]
        proc = subprocess.run(cmd, env=segway_tool_environment(d), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        if proc.returncode != 0:
            bb.fatal("segway-sign fip verify: %s does not verify under the ROTPK hash of SEGWAY_FIP_ROT_CERT: %s"
                     % (signed, proc.stdout.strip().splitlines()[-1:]))
    # Deferred mode: the FIP is left without certificates (BL1 refuses it) until the release job's
    # fip step signs fip-qemu.bin; the flash image is then BL1 + that FIP at the same offset.
    offset = int(d.getVar("SEGWAY_QEMU_FIP_OFFSET"), 0)
    with open(bl1, "rb") as f:
        bl1_data = f.read()
    with open(signed, "rb") as f:
        fip_data = f.read()
    if len(bl1_data) > offset:
        bb.fatal("segway-qemu-signed-boot: BL1 is %d bytes, more than the %#x before the FIP" % (len(bl1_data), offset))
    flash = os.path.join(b, d.getVar("SEGWAY_QEMU_FLASH"))
    with open(flash, "wb") as f:
        f.write(bl1_data + bytes(offset - len(bl1_data)) + fip_data)
}
do_compile[vardeps] += "SEGWAY_SIGN_MODE SEGWAY_QEMU_FIP_OFFSET ${@segway_fip_key_vardeps(d)}"

do_deploy() {
    install -d ${DEPLOYDIR}/segway-signed
    install -m 0644 ${B}/${SEGWAY_QEMU_FIP} ${DEPLOYDIR}/segway-signed/${SEGWAY_QEMU_FIP}
    install -m 0644 ${B}/${SEGWAY_QEMU_FLASH} ${DEPLOYDIR}/${SEGWAY_QEMU_FLASH}
}
addtask deploy after do_compile before do_build
