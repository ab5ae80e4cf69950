# OP-TEE's PKCS#11 TA (used through libckteec by segway-kms and p11-kit) is built with the
# in-tree TAs; keep it on explicitly so a BSP default cannot drop it.
EXTRA_OEMAKE:append:segway = " CFG_PKCS11_TA=y"

# qemuarm64-secureboot as the QEMU harness builds OP-TEE (scripts/segway_dev/firmware.py,
# OPTEE_OPTIONS; tests/meta_segway/test_chain_config.py keeps the two equal): GICv3, as TF-A
# (QEMU_USE_GIC_DRIVER=QEMU_GICV3) and runqemu (gic-version=3) are set up, and the PKCS#11 TA as an
# early TA inside tee.bin (BL32, which BL2 authenticates). meta-arm's defaults (GICv2, TA from the
# file system) stay on the other machines.
SEGWAY_OPTEE_CHAIN_OPTIONS = "CFG_ARM_GICV3=y CFG_IN_TREE_EARLY_TAS=pkcs11/fd02c9da-306c-48c7-a49c-bbd827ae86ee"
EXTRA_OEMAKE:append:qemuarm64-secureboot:segway = " ${SEGWAY_OPTEE_CHAIN_OPTIONS}"

# TAs are signed with the TA key in the token (segway_optee_ta: segway-sign ta sign, or the release
# job's optee-ta step in deferred mode), and OP-TEE checks them with that key's public half, taken
# from the signing certificate: never upstream's keys/default.pem.
inherit segway_optee_ta
EXTRA_OEMAKE:append:segway = " TA_PUBLIC_KEY=${SEGWAY_OPTEE_TA_PUBKEY}"

# Deferred mode: the unsigned TAs go to the deploy dir for the release job.
do_deploy:append:segway() {
    if [ "${SEGWAY_SIGN_MODE}" = "deferred" ]; then
        install -d ${DEPLOYDIR}/segway-signing/optee-ta
        find ${B} -name '*-*-*-*-*.ta' -exec install -m 0644 {} ${DEPLOYDIR}/segway-signing/optee-ta/ \;
    fi
}
