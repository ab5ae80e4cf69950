# segway_fip.bbclass - TF-A's generic TBBR chain of trust with the keys in the token.
#
# - segway_fip_rotpk(d, outdir): what BL1 and BL2 are built with (TRUSTED_BOARD_BOOT=1,
#   GENERATE_COT=0): ROTPK_HASH, the SHA-256 of the DER SubjectPublicKeyInfo of the ROT key's
#   public half, taken from the pinned certificate SEGWAY_FIP_ROT_CERT (public material only, both
#   signing modes; the ceremony writes the same bytes to fuses/<prefix>-fip.rotpk_hash.bin), and
#   ROT_KEY, that public key as PEM, dated before the hash: TF-A's qemu platform makefile
#   regenerates both with "openssl genrsa" unless ROT_KEY names an older existing file, and its
#   rule cannot hash an EC key anyway.
# - segway_fip_sign_generic(d, fip, out): "segway-sign fip sign --cot generic" with the six keys
#   (ROT key and the five fip-chain keys), as scripts/segway_dev/device.py signs the harness's FIP;
#   in deferred mode the FIP stays unsigned for the release job's fip step (conf/signing/<machine>.yaml).

inherit segway_cert

SEGWAY_FIP_ROTPK_DIR ?= "${WORKDIR}/segway-fip-rotpk"
SEGWAY_FIP_ROT_PUBKEY = "${SEGWAY_FIP_ROTPK_DIR}/rot_pub.pem"
SEGWAY_FIP_ROTPK_HASH = "${SEGWAY_FIP_ROTPK_DIR}/rotpk_sha256.bin"

# segway-sign option -> the variable holding the key's URI and the one naming its certificate.
SEGWAY_FIP_GENERIC_KEYS = "--rot-key:SEGWAY_FIP_ROT_KEY_URI:SEGWAY_FIP_ROT_CERT \
                           --trusted-world-key:SEGWAY_FIP_TRUSTED_WORLD_KEY_URI:SEGWAY_FIP_TRUSTED_WORLD_CERT \
                           --non-trusted-world-key:SEGWAY_FIP_NON_TRUSTED_WORLD_KEY_URI:SEGWAY_FIP_NON_TRUSTED_WORLD_CERT \
                           --soc-fw-key:SEGWAY_FIP_SOC_FW_KEY_URI:SEGWAY_FIP_SOC_FW_CERT \
                           --tos-fw-key:SEGWAY_FIP_TOS_FW_KEY_URI:SEGWAY_FIP_TOS_FW_CERT \
                           --nt-fw-key:SEGWAY_FIP_NT_FW_KEY_URI:SEGWAY_FIP_NT_FW_CERT"

def segway_fip_key_vardeps(d):
    """Key URIs and certificate fingerprints of the generic chain, for a signing task's vardeps
    (segway_cert_vardeps('SEGWAY_FIP_ROT_CERT') and the five others)."""
    names = []
    for entry in (d.getVar("SEGWAY_FIP_GENERIC_KEYS") or "").split():
        _, uri_var, cert_var = entry.split(":")
        names += [uri_var, segway_cert_vardeps(cert_var)]
    return " ".join(names)

def segway_fip_rotpk(d):
    """Write SEGWAY_FIP_ROT_PUBKEY and SEGWAY_FIP_ROTPK_HASH from SEGWAY_FIP_ROT_CERT."""
    import hashlib
    import os
    import subprocess
    cert = d.getVar("SEGWAY_FIP_ROT_CERT")
    if d.getVar(segway_cert_vardeps("SEGWAY_FIP_ROT_CERT")) == "none":
        bb.fatal("segway-fip: certificate %s (SEGWAY_FIP_ROT_CERT) not found; BL1 and BL2 would trust a "
                 "root-of-trust key nobody holds, in either signing mode" % cert)
    env = {"PATH": d.getVar("PATH")}
    pem = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True, env=env,
                         stdout=subprocess.PIPE).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem, check=True, env=env,
                         stdout=subprocess.PIPE).stdout
    pubkey, digest = d.getVar("SEGWAY_FIP_ROT_PUBKEY"), d.getVar("SEGWAY_FIP_ROTPK_HASH")
    bb.utils.mkdirhier(os.path.dirname(pubkey))
    with open(pubkey, "wb") as f:
        f.write(pem)
    os.utime(pubkey, (1, 1))
    with open(digest, "wb") as f:
        f.write(hashlib.sha256(der).digest())
    return digest

def segway_fip_sign_generic(d, fip, out):
    """Sign the FIP fip (without certificates) with the generic chain to out."""
    argv = ["fip", "sign", "--cot", "generic"]
    for entry in (d.getVar("SEGWAY_FIP_GENERIC_KEYS") or "").split():
        option, uri_var, cert_var = entry.split(":")
        if cert_var != "SEGWAY_FIP_ROT_CERT" and d.getVar(segway_cert_vardeps(cert_var)) == "none" \
                and d.getVar("SEGWAY_SIGN_MODE") == "hsm":
            bb.fatal("segway-sign fip: certificate %s (%s) not found; the build cannot pin that key"
                     % (d.getVar(cert_var), cert_var))
        argv += [option, d.getVar(uri_var)]
    argv += ["--fip", fip, "--out", out]
    segway_sign(d, "fip", argv, [fip], out, "SEGWAY_FIP_ROT_CERT")
