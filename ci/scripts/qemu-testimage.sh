#!/usr/bin/env bash
# The qemu test job: oeqa runtime tests (testimage) of one QEMU machine, then the offline check of
# that machine's signed release. JUnit lands in reports/.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
: "${SEGWAY_KAS_FILE:?}" "${SEGWAY_IMAGE:?}" "${SEGWAY_RELEASE_DIR:?}"
if [ -d "$SEGWAY_RELEASE_DIR" ]; then
    segway-sign release verify --certs "${SEGWAY_CERTS_DIR:-$top/conf/signing/certs}" "$SEGWAY_RELEASE_DIR"
else
    echo "qemu-testimage: no signed release in this pipeline (unprotected ref); testing the build only"
fi
kas shell "$top/$SEGWAY_KAS_FILE:$top/kas/ci.yml:$top/kas/testimage.yml" \
    -c "bitbake -c testimage $SEGWAY_IMAGE"
mkdir -p "$top/reports"
find "${KAS_BUILD_DIR:-$top/build}"/tmp*/log/oeqa -name '*.xml' -exec cp {} "$top/reports/" \;
