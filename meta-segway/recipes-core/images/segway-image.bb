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
# wrynose looks for .wks files in <layer>/files/wic and refuses layers with a wic/ directory;
# scarthgap looks in <layer>/wic only. Name this layer's directory for both.
WKS_SEARCH_PATH:prepend = "${SEGWAY_LAYERDIR}/files/wic:"
SEGWAY_VERITY_IMAGE_FILE = "${PN}-${MACHINE}.${SEGWAY_VERITY_FSTYPE}.verity"

# What the boot ROM and the first stages need in front of the A/B partitions, "|" between wks lines
# (segway-ab.wks.in turns them into lines), and where the first A/B partition may start (KiB).
SEGWAY_WIC_BOOT_PARTS ?= ""
SEGWAY_WIC_FIRST_ALIGN ?= "4096"

# STM32MP15 SD card: ST's first-stage layout (meta-st-stm32mp wic/sdcard-stm32mp157f-*-optee-1GB.wks.in:
# the ROM code finds fsbl1/fsbl2 and TF-A BL2 finds metadata1/2 and fip-a/fip-b by GPT name and UUID)
# with the segway-signed FSBL and FIP, and the environment partition ST's U-Boot names in
# u-boot,mmc-env-partition ("u-boot-env"; fw_env.config of segway-ab-boot-ok reads it).
SEGWAY_WIC_STM32_DT = "${@((d.getVar('STM32MP_DEVICETREE') or '').split() or [''])[0]}"
SEGWAY_WIC_STM32_FSBL ?= "${DEPLOY_DIR_IMAGE}/segway-signed/tf-a-${SEGWAY_WIC_STM32_DT}-sdcard_Signed.stm32"
SEGWAY_WIC_STM32_FIP ?= "${DEPLOY_DIR_IMAGE}/segway-signed/fip-${SEGWAY_WIC_STM32_DT}-optee_Signed.bin"
SEGWAY_WIC_STM32_METADATA ?= "${DEPLOY_DIR_IMAGE}/arm-trusted-firmware/metadata.bin"
SEGWAY_WIC_BOOT_PARTS:stm32mp15common ?= "\
    part fsbl1 --source rawcopy --fstype=ext4 --fsoptions noauto --part-name=fsbl1 --sourceparams=file=${SEGWAY_WIC_STM32_FSBL} --ondisk mmcblk --part-type 0x8301 --fixed-size 256K --align 17 |\
    part fsbl2 --source rawcopy --fstype=ext4 --fsoptions noauto --part-name=fsbl2 --sourceparams=file=${SEGWAY_WIC_STM32_FSBL} --ondisk mmcblk --part-type 0x8301 --fixed-size 256K |\
    part metadata1 --source rawcopy --fstype=ext4 --fsoptions noauto --part-name=metadata1 --sourceparams=file=${SEGWAY_WIC_STM32_METADATA} --ondisk mmcblk --part-type 0x8301 --fixed-size 256K |\
    part metadata2 --source rawcopy --fstype=ext4 --fsoptions noauto --part-name=metadata2 --sourceparams=file=${SEGWAY_WIC_STM32_METADATA} --ondisk mmcblk --part-type 0x8301 --fixed-size 256K |\
    part fip-a --source rawcopy --fstype=ext4 --fsoptions noauto --part-name=fip-a --sourceparams=file=${SEGWAY_WIC_STM32_FIP} --ondisk mmcblk --part-type 19d5df83-11b0-457b-be2c-7559c13142a5 --fixed-size 4096K --uuid 4fd84c93-54ef-463f-a7ef-ae25ff887087 |\
    part fip-b --source rawcopy --fstype=ext4 --fsoptions noauto --part-name=fip-b --sourceparams=file=${SEGWAY_WIC_STM32_FIP} --ondisk mmcblk --part-type 19d5df83-11b0-457b-be2c-7559c13142a5 --fixed-size 4096K --uuid 09c54952-d5bf-45af-acee-335303766fb3 |\
    part u-boot-env --source empty --part-name=u-boot-env --ondisk mmcblk --part-type 0x8301 --fixed-size 512K"

# i.MX8M SD card: the HAB-signed boot container at 33 KiB (IMX_BOOT_SEEK, where the ROM reads it;
# outside the partition table, after the GPT's first 17 KiB), and the first partition at 8 MiB,
# past U-Boot's raw environment (u-boot-fslc: 0x400000 + 4 KiB; u-boot-imx: 0x700000 + 16 KiB).
SEGWAY_WIC_IMX_BOOT ?= "${DEPLOY_DIR_IMAGE}/imx-boot-${MACHINE}.signed"
SEGWAY_WIC_BOOT_PARTS:mx8m-generic-bsp ?= "\
    part u-boot --source rawcopy --sourceparams=file=${SEGWAY_WIC_IMX_BOOT} --ondisk mmcblk --no-table --align ${IMX_BOOT_SEEK}"
SEGWAY_WIC_FIRST_ALIGN:mx8m-generic-bsp ?= "8192"
IMAGE_BOOT_FILES = "segway-fit-${MACHINE}.itb;fitImage"
do_image_wic[depends] += "segway-fit-image:do_deploy"
do_image_wic[depends] += "${PN}:do_segway_verity"
do_image_wic[depends] += "${@' '.join(r + ':do_deploy' for r in (d.getVar('SEGWAY_SIGNED_BOOT') or '').split())}"

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
