# OP-TEE on STM32MP15 with the PKCS#11 TA.
# STM32MP15 DK boards have no eMMC, hence no RPMB: secure storage (and the fTPM's NV state)
# uses OP-TEE's REE FS in /data/tee through tee-supplicant. This gives confidentiality and
# integrity but NO rollback protection. EV boards have eMMC and may switch to RPMB.
# The fTPM TA is not embedded as an early TA here: it is built against this recipe's TA dev
# kit (optee-ftpm depends on optee-os-stm32mp), so it ships in /lib/optee_armtz and is loaded
# through tee-supplicant, which REE FS needs anyway.
EXTRA_OEMAKE:append:segway = " CFG_PKCS11_TA=y CFG_REE_FS=y"
EXTRA_OEMAKE:append:segway:stm32mp15-disco = " CFG_RPMB_FS=n"

# ST's recipe installs no user TAs, so the PKCS#11 TA is linked into OP-TEE as an early TA.
EXTRA_OEMAKE:append:segway = " CFG_IN_TREE_EARLY_TAS=pkcs11/fd02c9da-306c-48c7-a49c-bbd827ae86ee"
