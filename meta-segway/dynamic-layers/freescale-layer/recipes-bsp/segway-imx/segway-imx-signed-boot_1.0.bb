SUMMARY = "HAB-signed i.MX8M boot image (flash.bin)"
DESCRIPTION = "Signs the deployed imx-boot flash.bin (SPL and the U-Boot FIT) for HABv4 with \
               segway-sign hab (CSF and image keys in the token, SRK table from the PKI) and deploys \
               flash.bin.signed next to it."
HOMEPAGE = "https://example.org/segway"
SECTION = "bsp"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy segway_sign

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"
COMPATIBLE_MACHINE = "(mx8m-generic-bsp)"

B = "${WORKDIR}/build"
do_fetch[noexec] = "1"
do_unpack[noexec] = "1"
do_patch[noexec] = "1"
do_configure[noexec] = "1"
do_install[noexec] = "1"

# The boot container comes from U-Boot's own binman (u-boot-fslc with UBOOT_PROVIDES_BOOT_CONTAINER,
# meta-freescale's default for i.MX8M) or from NXP's imx-mkimage (imx-boot, with u-boot-imx). Both
# deploy it as "imx-boot"; only one of them may run, or both would deploy that name.
SEGWAY_IMX_BOOT_PROVIDER = "${@'virtual/bootloader' if d.getVar('UBOOT_PROVIDES_BOOT_CONTAINER') == '1' else 'imx-boot'}"
do_compile[depends] += "${SEGWAY_IMX_BOOT_PROVIDER}:do_deploy"
do_compile[cleandirs] = "${B}"

SEGWAY_IMX_BOOT_IMAGE ?= "imx-boot"

python do_compile() {
    import os
    src = os.path.realpath(os.path.join(d.getVar("DEPLOY_DIR_IMAGE"), d.getVar("SEGWAY_IMX_BOOT_IMAGE")))
    out = os.path.join(d.getVar("B"), "flash.bin.signed")
    argv = ["hab", "sign", "--soc", d.getVar("SEGWAY_HAB_SOC"),
            "--csf-key", d.getVar("SEGWAY_HAB_CSF_KEY_URI"), "--csf-cert", d.getVar("SEGWAY_HAB_CSF_CERT"),
            "--img-key", d.getVar("SEGWAY_HAB_IMG_KEY_URI"), "--img-cert", d.getVar("SEGWAY_HAB_IMG_CERT"),
            "--srk-table", d.getVar("SEGWAY_HAB_SRK_TABLE"), "--srk-index", d.getVar("SEGWAY_HAB_SRK_INDEX"),
            "--in", src, "--out", out]
    segway_sign(d, "hab", argv, [src], out, "SEGWAY_HAB_IMG_CERT")
}
do_compile[vardeps] += "SEGWAY_SIGN_MODE SEGWAY_HAB_SOC SEGWAY_HAB_CSF_KEY_URI SEGWAY_HAB_IMG_KEY_URI SEGWAY_HAB_SRK_INDEX \
    ${@segway_cert_vardeps('SEGWAY_HAB_CSF_CERT')} ${@segway_cert_vardeps('SEGWAY_HAB_IMG_CERT')}"
do_compile[file-checksums] += "${SEGWAY_HAB_SRK_TABLE}:False"

do_deploy() {
    install -m 0644 ${B}/flash.bin.signed ${DEPLOYDIR}/${SEGWAY_IMX_BOOT_IMAGE}-${MACHINE}.signed
}
addtask deploy after do_compile before do_build
