# meta-arm's fTPM TA is restricted to its QEMU machines; build it for STM32MP15 against
# the TA dev kit of ST's OP-TEE (optee-os-stm32mp installs export-user_ta).
COMPATIBLE_MACHINE:stm32mp15common = "stm32mp15common"
DEPENDS:remove:stm32mp15common = "optee-os-tadevkit"
DEPENDS:append:stm32mp15common = " optee-os-stm32mp"
