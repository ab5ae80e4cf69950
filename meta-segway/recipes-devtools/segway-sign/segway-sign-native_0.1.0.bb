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

# The pyproject pins exact versions for the developers' virtualenv; inside bitbake the
# scarthgap recipes provide the build backend and the runtime modules.
PEP517_BUILD_OPTS = "--skip-dependency-check"

# Runtime modules: cryptography, asn1crypto, pylibfdt (python3-dtc), click and PyYAML come
# from OE-core; python-pkcs11 0.10.1 from this layer (meta-python has 0.7.0).
DEPENDS += "\
    dtc-native \
    python3-asn1crypto-native \
    python3-click-native \
    python3-cryptography-native \
    python3-dtc-native \
    python3-pkcs11-native \
    python3-pyyaml-native \
"
