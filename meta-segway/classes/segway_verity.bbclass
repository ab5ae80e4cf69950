# segway_verity.bbclass - dm-verity protected root file system with a signed root hash.
#
# Inherited by the root file system image. After the ext4 image is written:
#  hsm mode:      segway-sign verity sign builds the hash tree (appended, veritysetup-compatible),
#                 signs the root hash (PKCS#7 for CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG) and the
#                 result is checked with veritysetup, a verifier we did not write. The env file,
#                 root hash and signature are staged for the initramfs that opens the root.
#  deferred mode: the unsigned ext4 image is deployed as it is; the release job (the verity
#                 step of the signing plan) builds the tree, signs it and rebuilds the initramfs and FIT.

inherit segway_sign

SEGWAY_VERITY_FSTYPE ?= "ext4"
SEGWAY_VERITY_STAGING ?= "${TMPDIR}/work-shared/${MACHINE}/segway-verity"
SEGWAY_VERITY_WORKDIR = "${WORKDIR}/segway-verity"
# A fixed salt keeps the tree reproducible for identical root file systems.
SEGWAY_VERITY_SALT ?= "${@segway_verity_salt(d)}"

def segway_verity_salt(d):
    import hashlib
    return hashlib.sha256(("segway-verity:" + d.getVar("PN")).encode()).hexdigest()

IMAGE_FSTYPES:append = " ${SEGWAY_VERITY_FSTYPE}"
do_segway_verity[depends] += "cryptsetup-native:do_populate_sysroot segway-sign-native:do_populate_sysroot"

python do_segway_verity() {
    import glob
    import os
    import shutil
    import subprocess

    fstype = d.getVar("SEGWAY_VERITY_FSTYPE")
    imgdir = d.getVar("IMGDEPLOYDIR")
    base = d.getVar("IMAGE_NAME")  # includes IMAGE_NAME_SUFFIX (".rootfs") in scarthgap
    image = os.path.join(imgdir, "%s.%s" % (base, fstype))
    workdir = d.getVar("SEGWAY_VERITY_WORKDIR")
    outdir = os.path.join(workdir, "out")
    staging = d.getVar("SEGWAY_VERITY_STAGING")
    name = d.getVar("PN") + "-" + d.getVar("MACHINE")

    argv = ["verity", "sign", "--key", d.getVar("SEGWAY_VERITY_KEY_URI"),
            "--cert", d.getVar("SEGWAY_VERITY_CERT"), "--in", image, "--out-dir", outdir,
            "--appended", "--salt", d.getVar("SEGWAY_VERITY_SALT"), "--no-progress"]
    if d.getVar("SEGWAY_SIGN_MODE") == "deferred":
        segway_sign(d, "verity", argv, [image], image, "SEGWAY_VERITY_CERT")
        return

    shutil.rmtree(outdir, ignore_errors=True)
    marker = os.path.join(outdir, "verity.env")
    segway_sign(d, "verity", argv, [image], marker, "SEGWAY_VERITY_CERT")

    env = {}
    with open(marker) as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            env[key] = value.strip("'\"")
    verity_img = os.path.join(outdir, env["VERITY_IMAGE"])
    # Independent check: veritysetup must accept the tree for the signed root hash.
    subprocess.run(["veritysetup", "verify", verity_img, verity_img, env["VERITY_ROOT_HASH"],
                    "--hash-offset=%s" % env["VERITY_HASH_OFFSET"]],
                   check=True, env={"PATH": d.getVar("PATH")})

    bb.utils.mkdirhier(staging)
    for f in glob.glob(os.path.join(staging, name + ".*")):
        os.unlink(f)  # never let the initramfs pick up a stale root hash
    shutil.copyfile(marker, os.path.join(staging, name + ".verity.env"))
    shutil.copyfile(os.path.join(outdir, env["VERITY_ROOT_HASH_SIG"]), os.path.join(staging, name + ".roothash.p7s"))
    shutil.copyfile(os.path.join(outdir, env["VERITY_ROOT_HASH_FILE"]), os.path.join(staging, name + ".roothash"))
    shutil.copyfile(verity_img, os.path.join(imgdir, "%s.%s.verity" % (base, fstype)))
    link = os.path.join(imgdir, "%s.%s.verity" % (name, fstype))
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink("%s.%s.verity" % (base, fstype), link)
}
do_segway_verity[cleandirs] = "${SEGWAY_VERITY_WORKDIR}"
do_segway_verity[vardeps] += "SEGWAY_SIGN_MODE SEGWAY_VERITY_KEY_URI ${@segway_cert_vardeps('SEGWAY_VERITY_CERT')}"
do_segway_verity[vardepsexclude] += "DATETIME"
do_segway_verity[lockfiles] += "${SEGWAY_VERITY_STAGING}.lock"
do_segway_verity[doc] = "Build the dm-verity tree of the root file system and sign its root hash"
addtask segway_verity after do_image_${SEGWAY_VERITY_FSTYPE} before do_image_complete
