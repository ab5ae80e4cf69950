# Arm Juno (meta-arm-bsp) runs OP-TEE on real Armv8 hardware: build meta-arm's fTPM TA for it too,
# so segway-image can be tried on a reference board that has no vendor BSP layer.
COMPATIBLE_MACHINE:juno = "juno"
EXTRA_OEMAKE:append:juno = " CFG_ARM64_ta_arm64=y"
