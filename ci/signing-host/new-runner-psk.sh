#!/usr/bin/env bash
# new-runner-psk.sh INSTANCE RUNNER: create a TLS-PSK for one GitLab runner of one daemon instance.
# Appends "RUNNER:hexkey" to /etc/pkcs11-proxy/INSTANCE.psk (daemon side, mode 0640, group pkcs11, which
# the daemon runs as) and writes the
# same single line to ./RUNNER.psk for the runner's GitLab file variable PKCS11_PROXY_TLS_PSK_FILE.
# Restart the daemon afterwards (it reads the file at start). Rotate by removing the runner's line
# and running this again.
set -euo pipefail
instance=${1:?instance, e.g. segway}
runner=${2:?runner identity, e.g. hsm-runner-1}
case "$runner" in *[!A-Za-z0-9_.-]*) echo "runner identity: letters, digits, . _ - only" >&2; exit 2;; esac
daemon_file=/etc/pkcs11-proxy/$instance.psk
umask 077
if [ -f "$daemon_file" ] && grep -q "^$runner:" "$daemon_file"; then
    echo "$runner already has a PSK in $daemon_file; remove its line to rotate" >&2
    exit 1
fi
key=$(openssl rand -hex 32)
printf '%s:%s\n' "$runner" "$key" >> "$daemon_file"
chown root:pkcs11 "$daemon_file" && chmod 0640 "$daemon_file"
printf '%s:%s\n' "$runner" "$key" > "./$runner.psk"
echo "wrote ./$runner.psk (paste it into the runner's masked, protected File variable, then delete it)"
