# segway_sanity.bbclass - refuse images that would ship with open logins.
#
# Inherited globally by the segway distro. An image may not enable debug-tweaks or the
# empty-password/root-login features, in any flavour; the release flavour also refuses
# development signing keys and package-management/debug features.

SEGWAY_FORBIDDEN_IMAGE_FEATURES = "debug-tweaks empty-root-password allow-empty-password allow-root-login"
SEGWAY_FORBIDDEN_IMAGE_FEATURES:append:segway-release = " tools-debug tools-profile dbg-pkgs ptest-pkgs eclipse-debug"

python segway_sanity_image() {
    if not bb.data.inherits_class("image", d):
        return
    features = set((d.getVar("IMAGE_FEATURES") or "").split())
    forbidden = features & set((d.getVar("SEGWAY_FORBIDDEN_IMAGE_FEATURES") or "").split())
    if forbidden:
        bb.fatal("%s: IMAGE_FEATURES %s are not allowed in the segway distro" % (d.getVar("PN"), " ".join(sorted(forbidden))))
    installed = set((d.getVar("IMAGE_INSTALL") or "").split())
    if d.getVar("SEGWAY_FLAVOUR") == "release" and "segway-test-access" in installed:
        bb.fatal("%s: segway-test-access (root SSH key for oeqa) must not be in a release image" % d.getVar("PN"))
    if d.getVar("SEGWAY_FLAVOUR") == "release" and d.getVar("SEGWAY_SIGN_TOKEN") == "segway-dev" \
            and d.getVar("SEGWAY_SIGN_MODE") == "hsm":
        bb.fatal("%s: the release flavour must not sign with the segway-dev token; set SEGWAY_SIGN_TOKEN "
                 "(kas/signing-hsm.yml) or SEGWAY_SIGN_MODE = \"deferred\"" % d.getVar("PN"))
}
do_rootfs[prefuncs] += "segway_sanity_image"
