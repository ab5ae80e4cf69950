#!/usr/bin/env bash
# The test job: the project's own test suite (Debian 12, root), JUnit into reports/.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$top/reports"
exec "$top/scripts/test" --junitxml="$top/reports/junit-tests.xml" "$@"
