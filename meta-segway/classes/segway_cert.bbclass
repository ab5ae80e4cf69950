# segway_cert.bbclass - fingerprints of the public signing certificates, for task vardeps.

def segway_cert_fingerprint(d, var):
    """SHA-256 of the DER certificate named by var, or 'none' when the file is absent."""
    import base64
    import hashlib
    import os
    path = d.getVar(var) or ""
    if not path or not os.path.isfile(path):
        return "none"
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN CERTIFICATE-----" in data:
        body = data.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END CERTIFICATE-----", 1)[0]
        data = base64.b64decode(b"".join(body.split()))
    return hashlib.sha256(data).hexdigest()

def segway_cert_vardeps(var):
    """Name of the variable holding the fingerprint of the certificate in var."""
    return "SEGWAY_CERT_FP_" + var

# One fingerprint variable per certificate; referencing them from vardeps puts the value
# (not the file path) into the signature.
SEGWAY_CERT_FP_SEGWAY_FIT_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIT_CERT')}"
SEGWAY_CERT_FP_SEGWAY_VERITY_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_VERITY_CERT')}"
SEGWAY_CERT_FP_SEGWAY_STM32_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_STM32_CERT')}"
SEGWAY_CERT_FP_SEGWAY_FIP_ROT_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIP_ROT_CERT')}"
SEGWAY_CERT_FP_SEGWAY_FIP_TRUSTED_WORLD_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIP_TRUSTED_WORLD_CERT')}"
SEGWAY_CERT_FP_SEGWAY_FIP_NON_TRUSTED_WORLD_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIP_NON_TRUSTED_WORLD_CERT')}"
SEGWAY_CERT_FP_SEGWAY_FIP_SOC_FW_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIP_SOC_FW_CERT')}"
SEGWAY_CERT_FP_SEGWAY_FIP_TOS_FW_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIP_TOS_FW_CERT')}"
SEGWAY_CERT_FP_SEGWAY_FIP_NT_FW_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_FIP_NT_FW_CERT')}"
SEGWAY_CERT_FP_SEGWAY_OPTEE_TA_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_OPTEE_TA_CERT')}"
SEGWAY_CERT_FP_SEGWAY_HAB_CSF_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_HAB_CSF_CERT')}"
SEGWAY_CERT_FP_SEGWAY_HAB_IMG_CERT = "${@segway_cert_fingerprint(d, 'SEGWAY_HAB_IMG_CERT')}"
