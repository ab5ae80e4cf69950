SUMMARY = "segway-kms: on-device key management service and mini-CA"
DESCRIPTION = "gRPC key service backed by the fTPM (TPM 2.0 in OP-TEE) or OP-TEE's PKCS#11 TA, \
               with a small CA, attestation and an audit hash chain. Built from kms/ of this repository."
HOMEPAGE = "https://example.org/segway"
SECTION = "security"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SEGWAY_SRC_SUBDIR = "kms"

inherit segway_src python_setuptools_build_meta systemd useradd

# kms/pyproject.toml pins the developers' versions. bitbake builds with scarthgap's setuptools
# without checking those pins, kms/setup.py generates the gRPC stubs with python3-grpcio-tools-native
# (1.62), and the image gets the Python modules of the scarthgap layers: their versions are listed in
# conf/python/scarthgap-constraints.txt and tests/compat runs the KMS tests with exactly those.
PEP517_BUILD_OPTS = "--skip-dependency-check"
DEPENDS += "python3-grpcio-tools-native"

# The unit and the example configuration come from kms/conf/; the recipe adds a drop-in and a
# tmpfiles entry for the read-only root with its writable data partition, and a udev rule that
# lets the daemon's group open /dev/tee<N> for the PKCS#11 TA backend.
SRC_URI:append = " \
    file://segway-kmsd-image.conf \
    file://segway-kms.tmpfiles \
    file://70-segway-kms-tee.rules \
"

# profile written into segway-kms.yaml: "release" images refuse development-only shortcuts.
SEGWAY_KMS_PROFILE ?= "${@'release' if d.getVar('SEGWAY_FLAVOUR') == 'release' else 'development'}"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system segway-kms; --system segway-kms-admin"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /data/segway-kms --shell /sbin/nologin \
                       --gid segway-kms segway-kms"

SYSTEMD_SERVICE:${PN} = "segway-kmsd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -D -m 0644 ${S}/conf/segway-kmsd.service ${D}${systemd_system_unitdir}/segway-kmsd.service
    install -D -m 0644 ${UNPACKDIR}/segway-kmsd-image.conf \
        ${D}${systemd_system_unitdir}/segway-kmsd.service.d/segway-image.conf
    install -D -m 0644 ${UNPACKDIR}/segway-kms.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/segway-kms.conf
    install -D -m 0644 ${UNPACKDIR}/70-segway-kms-tee.rules \
        ${D}${nonarch_base_libdir}/udev/rules.d/70-segway-kms-tee.rules
    install -d -m 0750 ${D}${sysconfdir}/segway-kms
    sed -e 's|^profile: .*|profile: ${SEGWAY_KMS_PROFILE}|' \
        -e 's|^state_dir: .*|state_dir: /data/segway-kms|' \
        ${S}/conf/segway-kms.yaml > ${D}${sysconfdir}/segway-kms/segway-kms.yaml
    grep -q '^state_dir: /data/segway-kms$' ${D}${sysconfdir}/segway-kms/segway-kms.yaml
    chmod 0640 ${D}${sysconfdir}/segway-kms/segway-kms.yaml
    chown root:segway-kms ${D}${sysconfdir}/segway-kms ${D}${sysconfdir}/segway-kms/segway-kms.yaml
}

FILES:${PN} += "\
    ${systemd_system_unitdir}/segway-kmsd.service \
    ${systemd_system_unitdir}/segway-kmsd.service.d/segway-image.conf \
    ${nonarch_libdir}/tmpfiles.d/segway-kms.conf \
    ${nonarch_base_libdir}/udev/rules.d/70-segway-kms-tee.rules \
"
CONFFILES:${PN} = "${sysconfdir}/segway-kms/segway-kms.yaml"

# python3-pkcs11 (0.10.1), python3-tpm2-pytss (2.3.0) and python3-grpcio-health-checking come from
# this layer: meta-python's 0.7.0 and meta-tpm's 2.1.0 are too old, meta-python has no health
# checking. Of Python's own modules the code needs sqlite3 (key store) and asyncio (concurrent.futures
# for the gRPC server); json, datetime, netclient and the rest arrive with python3-protobuf.
RDEPENDS:${PN} += "\
    acl \
    optee-client \
    python3-asyncio \
    python3-click \
    python3-core \
    python3-cryptography \
    python3-grpcio \
    python3-grpcio-health-checking \
    python3-logging \
    python3-pkcs11 \
    python3-protobuf \
    python3-pyyaml \
    python3-sqlite3 \
    python3-tpm2-pytss \
    tpm2-tss \
"
