# segway_kernel.bbclass - segway kernel configuration for any kernel recipe.
#
# Adds the hardening, OP-TEE/fTPM, dm-verity (signed root hash) and module-signing fragments
# and installs the verity certificate as the kernel's built-in trusted key, so only a root hash
# signed by the PKI opens the root file system.

inherit segway_cert

FILESEXTRAPATHS:prepend := "${SEGWAY_LAYERDIR}/recipes-kernel/linux/files:"

SEGWAY_KERNEL_FRAGMENTS ?= "\
    segway-hardening.cfg \
    ${@'segway-arm64-hardening.cfg' if d.getVar('TARGET_ARCH') == 'aarch64' else 'segway-arm-hardening.cfg'} \
    segway-optee-ftpm.cfg \
    segway-dm-verity.cfg \
    segway-modsign.cfg \
"
# Everything is tied to the segway distro override, so the layer leaves other distros alone.
SRC_URI:append:segway = " ${@' '.join('file://' + f for f in d.getVar('SEGWAY_KERNEL_FRAGMENTS').split())}"

# The public verity certificate becomes the built-in trusted key (CONFIG_SYSTEM_TRUSTED_KEYS).
SEGWAY_KERNEL_TRUSTED_CERTS ?= "${SEGWAY_VERITY_CERT}"

python segway_kernel_trusted_keys() {
    import os
    if "segway" not in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        return
    dest = os.path.join(d.getVar("S"), "certs", "segway-trusted-keys.pem")
    pems = []
    for cert in (d.getVar("SEGWAY_KERNEL_TRUSTED_CERTS") or "").split():
        if not os.path.isfile(cert):
            bb.fatal("segway-kernel: trusted certificate %s not found; the kernel could not verify "
                     "the verity root hash signature" % cert)
        with open(cert) as f:
            pems.append(f.read().strip() + "\n")
    bb.utils.mkdirhier(os.path.dirname(dest))
    with open(dest, "w") as f:
        f.write("".join(pems))
}
do_configure[prefuncs] += "segway_kernel_trusted_keys"
segway_kernel_trusted_keys[doc] = "Install the verity certificate as the kernel's built-in trusted key"
do_configure[vardeps] += "${@segway_cert_vardeps('SEGWAY_VERITY_CERT')}"
do_configure[file-checksums] += "${@' '.join(c + ':False' for c in (d.getVar('SEGWAY_KERNEL_TRUSTED_CERTS') or '').split())}"
