SUMMARY = "segway initramfs: opens the dm-verity root with its signed root hash"
DESCRIPTION = "Packed into the signed FIT next to the kernel and DTB, so the root hash and its \
               signature are covered by the FIT signature."
SECTION = "images"
LICENSE = "MIT"

inherit core-image

PACKAGE_INSTALL = "\
    initramfs-framework-base \
    initramfs-module-udev \
    initramfs-module-segway-verity \
    busybox \
    base-passwd \
    cryptsetup \
    udev \
    util-linux-mount \
"

IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""
IMAGE_NAME_SUFFIX ?= ""
IMAGE_FSTYPES = "${INITRAMFS_FSTYPES}"
IMAGE_ROOTFS_SIZE = "8192"
IMAGE_ROOTFS_EXTRA_SPACE = "0"

SEGWAY_ROOTFS_IMAGE ?= "segway-image"
SEGWAY_VERITY_STAGING ?= "${TMPDIR}/work-shared/${MACHINE}/segway-verity"

# The root hash comes from the root file system image; in deferred mode there is none yet
# and the release job rebuilds this initramfs from the plan.
do_rootfs[depends] += "${SEGWAY_ROOTFS_IMAGE}:do_segway_verity"
# The staged root hash changes whenever the root file system does.
do_rootfs[nostamp] = "1"

python segway_install_verity() {
    import os
    import shutil
    staging = d.getVar("SEGWAY_VERITY_STAGING")
    name = d.getVar("SEGWAY_ROOTFS_IMAGE") + "-" + d.getVar("MACHINE")
    dest = os.path.join(d.getVar("IMAGE_ROOTFS"), "usr/share/segway/verity")
    sources = {"verity.env": name + ".verity.env", "roothash": name + ".roothash",
               "roothash.p7s": name + ".roothash.p7s"}
    if d.getVar("SEGWAY_SIGN_MODE") == "deferred":
        bb.note("deferred signing: the release job adds the verity root hash to this initramfs")
        return
    bb.utils.mkdirhier(dest)
    for target, source in sources.items():
        path = os.path.join(staging, source)
        if not os.path.isfile(path):
            bb.fatal("segway-initramfs: %s is missing; %s:do_segway_verity did not stage it" % (path, d.getVar("SEGWAY_ROOTFS_IMAGE")))
        shutil.copyfile(path, os.path.join(dest, target))
}
segway_install_verity[doc] = "Add the signed verity root hash of the root file system"
ROOTFS_POSTPROCESS_COMMAND += "segway_install_verity"
