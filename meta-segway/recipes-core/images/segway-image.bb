SUMMARY = "segway device image"
DESCRIPTION = "Read-only, dm-verity protected root with OP-TEE (tee-supplicant, PKCS#11 TA and \
               libckteec), the fTPM TA, tpm2-tss/tpm2-tools and the segway key service, booted from a signed FIT."
SECTION = "images"
LICENSE = "MIT"

inherit core-image extrausers segway_verity

IMAGE_FEATURES += "read-only-rootfs ssh-server-openssh"

SEGWAY_FTPM_PACKAGES ?= "${@bb.utils.contains('MACHINE_FEATURES', 'optee-ftpm', 'optee-ftpm', '', d)}"
SEGWAY_OPTEE_TA_PACKAGES ?= "optee-os-ta"
# ST's OP-TEE carries the PKCS#11 TA as an early TA (dynamic-layers/stm-st-stm32mp).
SEGWAY_OPTEE_TA_PACKAGES:stm32mp15common ?= ""

IMAGE_INSTALL = "\
    packagegroup-core-boot \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    optee-client \
    ${SEGWAY_OPTEE_TA_PACKAGES} \
    ${SEGWAY_FTPM_PACKAGES} \
    tpm2-tss \
    tpm2-tools \
    segway-kms \
    segway-hardening \
    segway-ab-boot-ok \
    ${SEGWAY_IMAGE_DEBUG_PACKAGES} \
"
# Root cannot log in (locked password, PermitRootLogin no). The administrator logs in with an
# SSH key provisioned on the data partition; its password is locked too.
EXTRA_USERS_PARAMS = "\
    usermod -L root; \
    useradd -m -d /home/segway -s /bin/sh segway; \
    usermod -L segway; \
"

# A/B layout with the signed FIT in each boot partition (segway-fit-image).
WKS_FILE = "segway-ab.wks.in"
SEGWAY_VERITY_IMAGE_FILE = "${PN}-${MACHINE}.${SEGWAY_VERITY_FSTYPE}.verity"
IMAGE_BOOT_FILES = "segway-fit-${MACHINE}.itb;fitImage"
do_image_wic[depends] += "segway-fit-image:do_deploy"
do_image_wic[depends] += "${PN}:do_segway_verity"

python () {
    # In deferred mode the verity tree and the FIT are produced by the release job, so no disk
    # image can be assembled here; the plan and the unsigned parts are deployed instead.
    if d.getVar("SEGWAY_SIGN_MODE") == "deferred":
        fstypes = [t for t in (d.getVar("IMAGE_FSTYPES") or "").split() if not t.startswith("wic")]
        d.setVar("IMAGE_FSTYPES", " ".join(fstypes))
}

# Machine-specific signed boot firmware built with the image.
SEGWAY_SIGNED_BOOT ?= ""
SEGWAY_SIGNED_BOOT:stm32mp15common ?= "segway-stm32mp-signed-boot"
SEGWAY_SIGNED_BOOT:mx8m-generic-bsp ?= "segway-imx-signed-boot"
do_image_complete[depends] += "${@' '.join(r + ':do_deploy' for r in (d.getVar('SEGWAY_SIGNED_BOOT') or '').split())} \
                               segway-fit-image:do_deploy"

# Deferred signing: deploy the machine's signing plan next to the unsigned artifacts; the
# release job runs "segway-sign release --plan plan.yaml --deploy-dir <deploy dir> --out <dir>".
python segway_deploy_signing_plan() {
    import os
    import shutil
    if d.getVar("SEGWAY_SIGN_MODE") != "deferred":
        return
    plan = d.getVar("SEGWAY_SIGNING_PLAN")
    if not os.path.isfile(plan):
        bb.fatal("deferred signing needs the signing plan %s for the release job" % plan)
    dest = os.path.join(d.getVar("IMGDEPLOYDIR"), "segway-signing")
    bb.utils.mkdirhier(dest)
    shutil.copyfile(plan, os.path.join(dest, "plan.yaml"))
}
segway_deploy_signing_plan[doc] = "Deploy the machine's signing plan for the release job (deferred mode)"
do_image_complete[prefuncs] += "segway_deploy_signing_plan"
do_image_complete[file-checksums] += "${SEGWAY_SIGNING_PLAN}:False"
