SUMMARY = "Python bindings for the TPM2 software stack (ESAPI, FAPI, marshalling, TCTIs)"
DESCRIPTION = "segway-kms drives the TPM through tpm2-pytss. meta-tpm's scarthgap recipe has 2.1.0, which \
               fails to build against tpm2-tss 4.0.2 with Python 3.12 and, once built, fails to import \
               with scarthgap's cryptography 42 (it subclasses RSAPrivateNumbers). 2.3.0 fixes both; \
               tpm2-pytss 3.x needs cryptography 47 or later. This layer's higher priority selects it."
HOMEPAGE = "https://github.com/tpm2-software/tpm2-pytss"
SECTION = "devel/python"
LICENSE = "BSD-2-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=500b2e742befc3da00684d8a1d5fd9da"

SRC_URI[sha256sum] = "20071129379656f5f3c3bc16d364612672b147d81191fb4eb9f9ff9fbee48410"

inherit pkgconfig pypi python_setuptools_build_meta

# setup.py generates the cffi bindings from tpm2-tss's headers, found through pkg-config, and lists
# cffi, cryptography, asn1crypto and packaging in setup_requires.
DEPENDS += "\
    python3-asn1crypto-native \
    python3-cffi-native \
    python3-cryptography-native \
    python3-packaging-native \
    python3-pkgconfig-native \
    python3-pycparser-native \
    python3-setuptools-scm-native \
    tpm2-tss \
"

# What tpm2_pytss imports at run time (its metadata also names packaging, which it never imports).
RDEPENDS:${PN} += "\
    libtss2 \
    python3-asn1crypto \
    python3-cffi \
    python3-cryptography \
    python3-pyyaml \
"
