#!/usr/bin/env bash
# The build job: kas build of one machine, release flavour, deferred signing (unsigned artifacts +
# the signing plan); the deploy dir becomes the artifact the sign job reads.
# Needs SEGWAY_KAS_FILE (the machine's kas file) and SEGWAY_MACHINE (the plan's board name).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
: "${SEGWAY_KAS_FILE:?set SEGWAY_KAS_FILE to the machine kas file}"
: "${SEGWAY_MACHINE:?set SEGWAY_MACHINE}"
[ -f "$top/$SEGWAY_KAS_FILE" ] || { echo "kas-build: no $SEGWAY_KAS_FILE" >&2; exit 2; }
mkdir -p "${DL_DIR:?}" "${SSTATE_DIR:?}"
kas build "$top/$SEGWAY_KAS_FILE:$top/kas/ci.yml:$top/kas/release.yml:$top/ci/kas/signing-plan.yml"
# The deploy dir under a stable name for the artifact (BitBake's MACHINE differs from the board name).
deploy=$(ls -d "${KAS_BUILD_DIR:-$top/build}"/tmp*/deploy/images/* | head -n 1)
rm -rf "$top/deploy"
cp -a "$deploy" "$top/deploy"
