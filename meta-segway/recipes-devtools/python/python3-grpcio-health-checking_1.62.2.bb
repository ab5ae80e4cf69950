SUMMARY = "Standard gRPC health checking service"
DESCRIPTION = "grpc.health.v1 servicer used by segway-kms; the version matches meta-python's grpcio."
HOMEPAGE = "https://grpc.io/"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=731e401b36f8077ae0c134b59be5c906"

SRC_URI[sha256sum] = "a44d1ea1e1510b5c62265dada04d86621bb1491d75de987713c9c0ea005c10a8"

PYPI_PACKAGE = "grpcio-health-checking"

inherit pypi setuptools3

RDEPENDS:${PN} += "\
    python3-grpcio \
    python3-protobuf \
"

BBCLASSEXTEND = "native nativesdk"
