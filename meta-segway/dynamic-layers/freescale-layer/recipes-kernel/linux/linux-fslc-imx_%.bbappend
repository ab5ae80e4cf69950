# i.MX kernel (kernel-yocto based): segway hardening, OP-TEE/fTPM, signed dm-verity,
# module signing.
inherit segway_kernel
