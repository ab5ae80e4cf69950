# STM32MP1 kernel: segway hardening, OP-TEE/fTPM, signed dm-verity, module signing.
# linux-stm32mp merges KERNEL_CONFIG_FRAGMENTS (paths) rather than *.cfg from SRC_URI.
inherit segway_kernel
KERNEL_CONFIG_FRAGMENTS:append:segway = " ${@' '.join('${WORKDIR}/' + f for f in d.getVar('SEGWAY_KERNEL_FRAGMENTS').split())}"
