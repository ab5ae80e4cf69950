# TF-A for meta-arm's qemuarm64-secureboot as the QEMU harness builds it
# (scripts/segway_dev/firmware.py, TFA_OPTIONS; tests/meta_segway/test_chain_config.py keeps the two
# equal): trusted board boot with the generic TBBR chain whose certificates segway-sign makes
# (GENERATE_COT=0, segway-qemu-signed-boot), BL1 and BL2 holding the ROTPK hash of the ceremony's
# fip key (taken from its pinned certificate: public, the same in both signing modes), mbedTLS for
# the certificate checks, GICv3 (OP-TEE is built for it: CFG_ARM_GICV3 in optee-os_%.bbappend, and
# runqemu boots gic-version=3: segway-qemu.inc) and OP-TEE as BL32 through opteed.
#
# qemuarm-secureboot (Armv7 Cortex-A15, OP-TEE as the AArch32 secure payload) keeps meta-arm's
# configuration: the Cortex-A15 has no GICv3 CPU interface, and the harness has no AArch32 chain that
# could prove TBB there, so its firmware is not authenticated (docs/yocto-layer.md).
inherit segway_fip

TFA_PLATFORM:qemuarm64-secureboot = "qemu"
# opteed even with MACHINE_FEATURES arm-ffa (meta-arm would switch to spmd and an OP-TEE SPMC).
TFA_SPD:qemuarm64-secureboot:segway = "opteed"
TFA_MBEDTLS:qemuarm64-secureboot:segway = "1"
SEGWAY_TFA_CHAIN_OPTIONS = "QEMU_USE_GIC_DRIVER=QEMU_GICV3 BL32_RAM_LOCATION=tdram TRUSTED_BOARD_BOOT=1 \
                            GENERATE_COT=0 KEY_ALG=ecdsa KEY_SIZE=256 HASH_ALG=sha256 E=0"
SEGWAY_TFA_ROT_OPTIONS = "ROT_KEY=${SEGWAY_FIP_ROT_PUBKEY} ROTPK_HASH=${SEGWAY_FIP_ROTPK_HASH}"
EXTRA_OEMAKE:append:qemuarm64-secureboot:segway = " ${SEGWAY_TFA_CHAIN_OPTIONS} ${SEGWAY_TFA_ROT_OPTIONS}"

# BL1 and the FIP without certificates (fip-qemu.bin, the input of the release plan's fip step);
# segway-qemu-signed-boot signs the FIP and deploys flash.bin (BL1 + signed FIP at 0x40000), the
# file runqemu boots (QB_DEFAULT_BIOS). The unsigned flash.bin meta-arm's do_compile writes is not
# deployed: BL1 would refuse its FIP.
# nooelint: oelint.vars.mispell
TFA_INSTALL_TARGET:qemuarm64-secureboot:segway = "bl1 fip"

python do_segway_tfa_rotpk() {
    if "segway" in (d.getVar("DISTROOVERRIDES") or "").split(":") and \
            "qemuarm64-secureboot" in (d.getVar("MACHINEOVERRIDES") or "").split(":"):
        segway_fip_rotpk(d)
}
do_segway_tfa_rotpk[cleandirs] = "${SEGWAY_FIP_ROTPK_DIR}"
do_segway_tfa_rotpk[depends] += "openssl-native:do_populate_sysroot"
do_segway_tfa_rotpk[vardeps] += "${@segway_cert_vardeps('SEGWAY_FIP_ROT_CERT')}"
do_segway_tfa_rotpk[doc] = "TF-A's ROTPK_HASH (and ROT_KEY) from the FIP root-of-trust certificate"
addtask segway_tfa_rotpk after do_patch before do_compile
