#!/usr/bin/env bash
# The sign job: check the environment contract, then sign the machine's deploy dir into a release
# and verify it offline. Runs unchanged against pkcs11-proxy (CI) and p11-kit remoting (tests).
#
# Contract (GitLab CI/CD variables; the secrets are masked, protected variables of type "file",
# so GitLab hands the job a path and the secret never appears in the environment or the log):
#   SEGWAY_MACHINE             machine name; the plan is conf/signing/$SEGWAY_MACHINE.yaml
#   SEGWAY_DEPLOY_DIR          deploy dir of the build job (read only)
#   SEGWAY_RELEASE_DIR         release directory to create
#   SEGWAY_PKCS11_MODULE       libpkcs11-proxy.so in CI (p11-kit-client.so in tests)
#   SEGWAY_PIN_FILE            file variable: the token user PIN
#   pkcs11-proxy only:
#     PKCS11_PROXY_SOCKET        tls://host:port of the pkcs11-daemon
#     PKCS11_PROXY_TLS_PSK_FILE  file variable: "identity:hexkey", one line, this runner's PSK
#   p11-kit only:
#     P11_KIT_SERVER_ADDRESS     unix:path=... of a p11-kit server
#   optional: SEGWAY_CERTS_DIR (default conf/signing/certs), SEGWAY_SIGN (default segway-sign)
set -euo pipefail

fail() { echo "sign-release: $*" >&2; exit 2; }
need() { [ -n "${!1:-}" ] || fail "$1 is not set (see ci/README.md, 'Sign job contract')"; }
secret_file() {
    need "$1"
    local f=${!1}
    [ -f "$f" ] || fail "$1 must name a file (a GitLab variable of type File), not a value"
    [ -s "$f" ] || fail "$1 names an empty file"
    case "$(stat -c %a "$f")" in
        *[1-7]) fail "$1 file $f is readable by others (mode $(stat -c %a "$f"))" ;;
    esac
}

top=$(cd "$(dirname "$0")/../.." && pwd)
for v in SEGWAY_MACHINE SEGWAY_DEPLOY_DIR SEGWAY_RELEASE_DIR SEGWAY_PKCS11_MODULE; do need "$v"; done
secret_file SEGWAY_PIN_FILE
[ -z "${SEGWAY_PIN:-}" ] || fail "SEGWAY_PIN is set: pass the PIN only as the file variable SEGWAY_PIN_FILE"

case "$(basename "$SEGWAY_PKCS11_MODULE")" in
    libpkcs11-proxy*)
        need PKCS11_PROXY_SOCKET
        case "$PKCS11_PROXY_SOCKET" in
            tls://*) ;;
            *) fail "PKCS11_PROXY_SOCKET must be tls://host:port (TLS-PSK); got a non-TLS endpoint" ;;
        esac
        secret_file PKCS11_PROXY_TLS_PSK_FILE
        grep -Eq '^[^:[:space:]]+:[0-9a-fA-F]{32,}$' "$PKCS11_PROXY_TLS_PSK_FILE" \
            || fail "PKCS11_PROXY_TLS_PSK_FILE is not one 'identity:hexkey' line"
        ;;
    p11-kit-client*)
        need P11_KIT_SERVER_ADDRESS
        ;;
    *)
        fail "SEGWAY_PKCS11_MODULE must be libpkcs11-proxy.so (or p11-kit-client.so); got $(basename "$SEGWAY_PKCS11_MODULE")"
        ;;
esac

plan="$top/conf/signing/$SEGWAY_MACHINE.yaml"
[ -f "$plan" ] || fail "no signing plan for machine '$SEGWAY_MACHINE' ($plan)"
certs=${SEGWAY_CERTS_DIR:-$top/conf/signing/certs}
sign=${SEGWAY_SIGN:-segway-sign}

"$sign" release --plan "$plan" --deploy-dir "$SEGWAY_DEPLOY_DIR" --out "$SEGWAY_RELEASE_DIR" \
    --certs "$certs" --pin-file "$SEGWAY_PIN_FILE" --no-progress --json
"$sign" release verify --certs "$certs" "$SEGWAY_RELEASE_DIR"
