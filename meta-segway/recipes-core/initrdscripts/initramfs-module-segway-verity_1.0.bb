SUMMARY = "initramfs-framework module opening a signed dm-verity root"
DESCRIPTION = "Opens the root partition with veritysetup using the root hash and its PKCS#7 \
               signature carried in the signed FIT's initramfs, then mounts it read-only."
HOMEPAGE = "https://example.org/segway"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://segwayverity"
S = "${UNPACKDIR}"

do_install() {
    install -D -m 0755 ${UNPACKDIR}/segwayverity ${D}/init.d/85-segwayverity
}

PACKAGE_ARCH = "${MACHINE_ARCH}"

FILES:${PN} += "/init.d/85-segwayverity"
RDEPENDS:${PN} += "cryptsetup initramfs-framework-base util-linux-mount"
