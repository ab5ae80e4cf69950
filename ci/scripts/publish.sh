#!/usr/bin/env bash
# The publish job: verify every signed release once more, pack each with its manifest and the JUnit
# reports, and upload them to the project's generic package registry (tags) or keep them as job
# artifacts (protected branches).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
certs=${SEGWAY_CERTS_DIR:-$top/conf/signing/certs}
out="$top/publish"
rm -rf "$out"
mkdir -p "$out"
shopt -s nullglob
releases=("$top"/release-*)
[ "${#releases[@]}" -gt 0 ] || { echo "publish: no release-* directories from the sign jobs" >&2; exit 2; }
for rel in "${releases[@]}"; do
    segway-sign release verify --certs "$certs" "$rel"
    name=$(basename "$rel")
    tar -C "$top" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@${SOURCE_DATE_EPOCH:-0}" -cf "$out/$name.tar" "$name"
    cp "$rel/manifest.json" "$out/$name.manifest.json"
    cp "$rel/manifest.json.p7s" "$out/$name.manifest.json.p7s"
done
if [ -d "$top/reports" ]; then
    tar -C "$top" --sort=name -cf "$out/junit-reports.tar" reports
fi
(cd "$out" && sha256sum -- * > SHA256SUMS)
if [ -n "${CI_COMMIT_TAG:-}" ]; then
    for f in "$out"/*; do
        curl --fail --silent --show-error --header "JOB-TOKEN: ${CI_JOB_TOKEN:?}" --upload-file "$f" \
            "${CI_API_V4_URL:?}/projects/${CI_PROJECT_ID:?}/packages/generic/segway-release/${CI_COMMIT_TAG}/$(basename "$f")"
    done
fi
