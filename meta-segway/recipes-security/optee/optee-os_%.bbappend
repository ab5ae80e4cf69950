# OP-TEE's PKCS#11 TA (used through libckteec by segway-kms and p11-kit) is built with the
# in-tree TAs; keep it on explicitly so a BSP default cannot drop it.
EXTRA_OEMAKE:append:segway = " CFG_PKCS11_TA=y"
