# QEMU kernels: segway hardening, OP-TEE/fTPM, signed dm-verity and module signing.
inherit segway_kernel
