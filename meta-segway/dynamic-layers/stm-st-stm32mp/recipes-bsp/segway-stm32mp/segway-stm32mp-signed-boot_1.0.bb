SUMMARY = "Signed STM32MP1 boot chain: FSBL (TF-A BL2, STM32 header v1) and TF-A FIP (TBBR)"
DESCRIPTION = "Signs the deployed TF-A BL2 images with segway-sign stm32 (ECDSA P-256, key in the \
               token) and the FIPs with segway-sign fip (TBBR certificate chain under the ROT key), deploying \
               *_Signed copies next to the originals."
HOMEPAGE = "https://example.org/segway"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy segway_sign

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"
COMPATIBLE_MACHINE = "(stm32mp15common)"

B = "${WORKDIR}/build"
do_fetch[noexec] = "1"
do_unpack[noexec] = "1"
do_patch[noexec] = "1"
do_configure[noexec] = "1"
do_install[noexec] = "1"

do_compile[depends] += " \
    virtual/trusted-firmware-a:do_deploy \
    virtual/bootloader:do_deploy \
    virtual-optee-os:do_deploy \
"
do_compile[cleandirs] = "${B}"

# ST's deploy names at the pinned commit: tf-a-<dt>-<config>.stm32 for every TF_A_CONFIG (boot
# devices; debug-* copies are not signed) and fip-<dt>-optee.bin (fip-utils-stm32mp.bbclass).
SEGWAY_STM32_FSBL_GLOB ?= "arm-trusted-firmware/tf-a-*.stm32"
SEGWAY_STM32_FIP_GLOB ?= "fip/fip-*-optee*.bin"

python do_compile() {
    import glob
    import os
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    b = d.getVar("B")
    fsbls = [p for p in sorted(glob.glob(os.path.join(deploy, d.getVar("SEGWAY_STM32_FSBL_GLOB"))))
             if "_Signed" not in p and os.path.isfile(p)]
    fips = [p for p in sorted(glob.glob(os.path.join(deploy, d.getVar("SEGWAY_STM32_FIP_GLOB"))))
            if "_Signed" not in p and os.path.isfile(p)]
    if not fsbls or not fips:
        bb.fatal("segway-stm32mp-signed-boot: nothing to sign (FSBL: %d, FIP: %d) in %s" % (len(fsbls), len(fips), deploy))
    for src in fsbls:
        root, ext = os.path.splitext(os.path.basename(src))
        out = os.path.join(b, root + "_Signed" + ext)
        segway_sign(d, "stm32", ["stm32", "sign", "--key", d.getVar("SEGWAY_STM32_KEY_URI"), "--in", src, "--out", out],
                    [src], out, "SEGWAY_STM32_CERT")
    # TF-A on STM32MP1 checks the FIP against the PKH the ROM checked BL2 with: the FIP's
    # root-of-trust key is the BL2 key (SEGWAY_STM32_KEY_URI), not the generic TBBR one.
    for src in fips:
        root, ext = os.path.splitext(os.path.basename(src))
        out = os.path.join(b, root + "_Signed" + ext)
        segway_sign(d, "fip", ["fip", "sign", "--rot-key", d.getVar("SEGWAY_STM32_KEY_URI"), "--fip", src, "--out", out],
                    [src], out, "SEGWAY_STM32_CERT")
}
do_compile[vardeps] += "SEGWAY_SIGN_MODE SEGWAY_STM32_KEY_URI ${@segway_cert_vardeps('SEGWAY_STM32_CERT')}"

do_deploy() {
    install -d ${DEPLOYDIR}/segway-signed
    install -m 0644 ${B}/*_Signed* ${DEPLOYDIR}/segway-signed/
}
addtask deploy after do_compile before do_build
