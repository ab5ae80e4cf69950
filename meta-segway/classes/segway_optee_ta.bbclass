# segway_optee_ta.bbclass - OP-TEE Trusted Applications signed with the TA key in the token, and
# OP-TEE built with that key's public half.
#
# Inherited by optee-os (its in-tree TAs) and by recipes that build TAs with OP-TEE's TA dev kit.
#  - do_segway_optee_ta_keys (before do_compile, both signing modes): the public key of
#    SEGWAY_OPTEE_TA_CERT, extracted from the pinned certificate, is SEGWAY_OPTEE_TA_PUBKEY; the
#    optee-os append builds with TA_PUBLIC_KEY = it, never upstream's keys/default.pem. OP-TEE's
#    own signing path (TA_SIGN_KEY) gets a throwaway key made here: the <uuid>.ta files make writes
#    carry a signature this OP-TEE refuses.
#  - do_segway_optee_ta_sign (after do_compile, before do_install): every <uuid>.stripped.elf under
#    SEGWAY_OPTEE_TA_DIRS is signed by segway-sign ("ta sign": hash on the host, signature from the
#    token) over the <uuid>.ta next to it, which do_install then installs.
#  - deferred mode: the stripped ELF is left as <uuid>.ta (unsigned: OP-TEE refuses it); the release
#    job's optee-ta step signs the TAs.

inherit segway_sign

SEGWAY_OPTEE_TA_WORKDIR = "${WORKDIR}/segway-optee-ta"
SEGWAY_OPTEE_TA_PUBKEY = "${SEGWAY_OPTEE_TA_WORKDIR}/ta-public-key.pem"
SEGWAY_OPTEE_TA_BUILD_KEY = "${SEGWAY_OPTEE_TA_WORKDIR}/throwaway-ta-sign-key.pem"
SEGWAY_OPTEE_TA_DIRS ??= "${B}"
SEGWAY_OPTEE_TA_ALGO ??= "pkcs1"

EXTRA_OEMAKE:append:segway = " TA_SIGN_KEY=${SEGWAY_OPTEE_TA_BUILD_KEY}"

def segway_optee_ta_keys(d):
    """Write SEGWAY_OPTEE_TA_PUBKEY (the RSA public key of SEGWAY_OPTEE_TA_CERT, PEM) and a throwaway
    SEGWAY_OPTEE_TA_BUILD_KEY for OP-TEE's own TA_SIGN_KEY path."""
    import os
    import subprocess
    cert = d.getVar("SEGWAY_OPTEE_TA_CERT")
    if d.getVar(segway_cert_vardeps("SEGWAY_OPTEE_TA_CERT")) == "none":
        bb.fatal("segway-sign optee-ta: certificate %s (SEGWAY_OPTEE_TA_CERT) not found; OP-TEE would be built "
                 "with a TA key nobody holds, in either signing mode" % cert)
    env = {"PATH": d.getVar("PATH")}
    pubkey = d.getVar("SEGWAY_OPTEE_TA_PUBKEY")
    bb.utils.mkdirhier(os.path.dirname(pubkey))
    pem = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True, env=env,
                         stdout=subprocess.PIPE).stdout
    text = subprocess.run(["openssl", "pkey", "-pubin", "-noout", "-text"], input=pem, check=True, env=env,
                          stdout=subprocess.PIPE).stdout.decode()
    if "Modulus" not in text:
        bb.fatal("segway-sign optee-ta: %s does not hold an RSA key; OP-TEE checks TAs with RSA" % cert)
    with open(pubkey + ".tmp", "wb") as f:
        f.write(pem)
    os.replace(pubkey + ".tmp", pubkey)
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", d.getVar("SEGWAY_OPTEE_TA_BUILD_KEY")], check=True, env=env,
                   stdout=subprocess.DEVNULL)

def segway_optee_ta_sign_all(d):
    """Sign every <uuid>.stripped.elf under SEGWAY_OPTEE_TA_DIRS to the <uuid>.ta beside it (or, in
    deferred mode, leave the ELF there for the release job). Returns the signed TAs."""
    import glob
    import os
    import re
    name = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.stripped\.elf$")
    elfs = sorted({p for top in (d.getVar("SEGWAY_OPTEE_TA_DIRS") or "").split()
                   for p in glob.glob(os.path.join(top, "**", "*.stripped.elf"), recursive=True)
                   if name.match(os.path.basename(p))})
    tas = []
    for elf in elfs:
        ta = elf[:-len(".stripped.elf")] + ".ta"
        argv = ["ta", "sign", "--key", d.getVar("SEGWAY_OPTEE_TA_KEY_URI"), "--in", elf, "--out", ta,
                "--algo", d.getVar("SEGWAY_OPTEE_TA_ALGO")]
        segway_sign(d, "optee-ta", argv, [elf], ta, "SEGWAY_OPTEE_TA_CERT")
        tas.append(ta)
    bb.note("segway-sign optee-ta: %d TA(s) under %s" % (len(tas), d.getVar("SEGWAY_OPTEE_TA_DIRS")))
    return tas

do_segway_optee_ta_keys[depends] += "openssl-native:do_populate_sysroot"
python do_segway_optee_ta_keys() {
    if "segway" in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        segway_optee_ta_keys(d)
}
do_segway_optee_ta_keys[cleandirs] = "${SEGWAY_OPTEE_TA_WORKDIR}"
do_segway_optee_ta_keys[vardeps] += "${@segway_cert_vardeps('SEGWAY_OPTEE_TA_CERT')}"
do_segway_optee_ta_keys[doc] = "OP-TEE's TA_PUBLIC_KEY from the TA signing certificate, and a throwaway TA_SIGN_KEY"
addtask segway_optee_ta_keys after do_configure before do_compile

python do_segway_optee_ta_sign() {
    if "segway" in (d.getVar("DISTROOVERRIDES") or "").split(":"):
        segway_optee_ta_sign_all(d)
}
do_segway_optee_ta_sign[vardeps] += "SEGWAY_SIGN_MODE SEGWAY_OPTEE_TA_KEY_URI SEGWAY_OPTEE_TA_ALGO ${@segway_cert_vardeps('SEGWAY_OPTEE_TA_CERT')}"
do_segway_optee_ta_sign[doc] = "Sign the TAs built by this recipe with the TA key in the token (segway-sign ta sign)"
addtask segway_optee_ta_sign after do_compile before do_install
