# The root file system is read-only: OP-TEE's REE file system (secure storage, fTPM NV state
# on boards without RPMB) lives on the data partition.
EXTRA_OECMAKE:append:segway = " -DCFG_TEE_FS_PARENT_PATH='/data/tee'"

# tee-supplicant must run before anything talks to the fTPM or the PKCS#11 TA.
SYSTEMD_SERVICE:${PN}:segway = "tee-supplicant@teepriv0.service"
SYSTEMD_AUTO_ENABLE:${PN}:segway = "enable"
