# TF-A trusted board boot: BL2 verifies the FIP's TBBR certificate chain against the ROT key
# hash. The same build switches ST's SIGN_ENABLE turns on, without ST's closed SigningTool:
# segway-stm32mp-signed-boot signs BL2 (STM32 header) and the FIP with segway-sign.
# mbedTLS is linked into BL2 for the certificate checks, hence its licence.
LICENSE:append:segway = " & ${LICENSE_MBEDTLS}"
LIC_FILES_CHKSUM:append:segway = " ${LIC_FILES_CHKSUM_MBEDTLS}"
SRC_URI:append:segway = " ${SRC_URI_MBEDTLS}"
# SRCREV_FORMAT parts are joined with "_", not spaces.
# nooelint: oelint.vars.inconspaces
SRCREV_FORMAT:append:segway = "_mbedtls"
EXTRA_OEMAKE:append:segway = " TRUSTED_BOARD_BOOT=1 MBEDTLS_DIR=${TFA_MBEDTLS_DIR}"
