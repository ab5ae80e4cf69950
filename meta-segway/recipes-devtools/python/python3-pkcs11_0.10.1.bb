SUMMARY = "PKCS#11 (Cryptoki) support for Python"
DESCRIPTION = "High level interface to PKCS#11 tokens. segway-sign and segway-kms pin 0.10.1; \
               meta-python scarthgap only has 0.7.0, whose API lacks what both use."
HOMEPAGE = "https://github.com/pyauth/python-pkcs11"
SECTION = "devel/python"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=f68bda54505b4002e6ec86e08125ef79"

DEPENDS += "\
    python3-cython-native \
    python3-setuptools-scm-native \
"

SRC_URI += "file://0001-pyproject-build-with-scarthgap-setuptools.patch"
SRC_URI[sha256sum] = "e0d7ccede3b3145a678d7c8c59b3c64dcebeb77c9146ad3394a4b1309c4ab2a2"

PYPI_PACKAGE = "python_pkcs11"
UPSTREAM_CHECK_PYPI_PACKAGE = "python-pkcs11"

inherit pypi python_setuptools_build_meta

RDEPENDS:${PN} += "python3-asn1crypto"

BBCLASSEXTEND = "native nativesdk"
