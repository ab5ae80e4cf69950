# Build meta-arm's fTPM TA for i.MX8M; it is embedded as an early TA by meta-arm's
# optee-os_%.bbappend (which also applies to meta-freescale's optee-os) when the machine has
# the optee-ftpm feature (kas/imx8mm.yml adds it).
COMPATIBLE_MACHINE:mx8m-generic-bsp = "(mx8m-generic-bsp)"
EXTRA_OEMAKE:append:mx8m-generic-bsp = " CFG_ARM64_ta_arm64=y"
