SUMMARY = "segway-sign: sign boot artifacts with keys kept in a PKCS#11 token"
DESCRIPTION = "Host tool used by segway-sign.bbclass to sign FIT images, U-Boot's public-key DTB, \
               STM32 FSBL images, TF-A FIPs, i.MX HAB images and dm-verity root hashes."
HOMEPAGE = "https://example.org/segway"
SECTION = "devel"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SEGWAY_SRC_SUBDIR = "signing"

inherit segway_src python_setuptools_build_meta
inherit_defer native

# signing/pyproject.toml pins the developers' versions; bitbake builds with scarthgap's setuptools
# without checking those pins and runs segway-sign with the scarthgap modules below (versions in
# conf/python/scarthgap-constraints.txt; tests/compat runs the FIT, STM32 and dm-verity tests with them).
PEP517_BUILD_OPTS = "--skip-dependency-check"

# Runtime modules: cryptography 42, asn1crypto, pylibfdt 1.7.0 (python3-dtc), click 8.1 and PyYAML 6.0.1
# come from OE-core; python-pkcs11 0.10.1 from this layer (meta-python has 0.7.0).
DEPENDS += "\
    dtc-native \
    python3-asn1crypto-native \
    python3-click-native \
    python3-cryptography-native \
    python3-dtc-native \
    python3-pkcs11-native \
    python3-pyyaml-native \
"
