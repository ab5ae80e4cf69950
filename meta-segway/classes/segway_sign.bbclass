# segway_sign.bbclass - sign build artifacts with segway-sign through a PKCS#11 token.
#
# Recipes call segway_sign(d, kind, argv, inputs, output, cert_var) from a python task. The helper:
#  - runs segway-sign-native with the PKCS#11 module, proxy socket, PSK file and PIN file taken
#    from the original environment (kas "env:" null entries), never from local.conf and never
#    exported into a run file or a task hash;
#  - serialises every token access in the build with one lock file;
#  - fails the task when the tool fails, when the output is missing or empty, or when the
#    public certificate that pins the key is missing;
#  - in SEGWAY_SIGN_MODE = "deferred" copies the unsigned input to the output path; the release
#    job signs what the machine's signing plan names (segway-image deploys it as
#    segway-signing/plan.yaml for segway-sign release --plan).
#
# segway_add_fit_pubkey(d, dtb, output) puts the FIT public key into a U-Boot control DTB from
# the pinned certificate, in both modes: only public material is needed, and a deferred build
# must still ship a U-Boot that enforces the release key (the release job never re-keys U-Boot).
#
# Tasks that sign must list the certificate fingerprint in their vardeps, e.g.
#   do_segway_sign[vardeps] += "${@segway_cert_vardeps('SEGWAY_FIT_CERT')}"
# so a key rotation behind an unchanged URI changes the task hash and re-signs.

inherit segway_cert

DEPENDS:append = " segway-sign-native"

SEGWAY_SIGN_LOCK ?= "${TMPDIR}/locks/segway-hsm.lock"

SEGWAY_SIGN_MODE[doc] = "hsm: sign with the PKCS#11 token during the build; deferred: emit unsigned artifacts and a signing plan"

def segway_tool_environment(d):
    """Environment for segway-sign with public material only: the task's PATH, nothing else."""
    return {
        "PATH": d.getVar("PATH"),
        "HOME": d.getVar("WORKDIR"),
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }

def segway_sign_environment(d):
    """Environment for segway-sign: segway_tool_environment plus the token variables from the
    environment bitbake was started in (BB_ORIGENV)."""
    import os
    env = segway_tool_environment(d)
    origenv = d.getVar("BB_ORIGENV", False)
    for name in (d.getVar("SEGWAY_SIGN_ENV_VARS") or "").split():
        value = origenv.getVar(name) if origenv else None
        if value is None:
            value = os.environ.get(name)
        if value:
            env[name] = value
    return env

def segway_token_args(env):
    """Token options every token-touching subcommand accepts. The PIN is passed by file or
    by environment variable name, never on the command line."""
    args = []
    if env.get("SEGWAY_PKCS11_MODULE"):
        args += ["--module", env["SEGWAY_PKCS11_MODULE"]]
    if env.get("SEGWAY_PIN_FILE"):
        args += ["--pin-file", env["SEGWAY_PIN_FILE"]]
    elif env.get("SEGWAY_PIN"):
        args += ["--pin-env", "SEGWAY_PIN"]
    return args

def segway_sign(d, kind, argv, inputs, output, cert_var=None):
    """Run 'segway-sign <argv>' (argv without token options) producing output, or, in
    deferred mode, copy inputs[0] to output for the release job."""
    import os
    import shutil

    mode = d.getVar("SEGWAY_SIGN_MODE")
    if mode not in ("hsm", "deferred"):
        bb.fatal("SEGWAY_SIGN_MODE must be 'hsm' or 'deferred', not %r" % mode)
    segway_require_inputs(kind, inputs)

    if mode == "deferred":
        if output != inputs[0]:
            shutil.copyfile(inputs[0], output)
        bb.note("segway-sign %s: deferred, %s left unsigned for the release job" % (kind, os.path.basename(output)))
        return

    if cert_var and d.getVar(segway_cert_vardeps(cert_var)) == "none":
        bb.fatal("segway-sign %s: certificate %s (%s) not found; the build cannot pin the signing key. "
                 "Add it or use SEGWAY_SIGN_MODE = \"deferred\"." % (kind, d.getVar(cert_var), cert_var))

    env = segway_sign_environment(d)
    segway_run_tool(d, kind, ["segway-sign"] + argv + segway_token_args(env), env, output, lock=True)

def segway_require_inputs(kind, inputs):
    import os
    for path in inputs:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            bb.fatal("segway-sign %s: input %s is missing or empty" % (kind, path))

def segway_run_tool(d, kind, cmd, env, output, lock=False):
    """Run segway-sign; fail the task on a non-zero exit or a missing/empty output."""
    import os
    import subprocess
    if os.path.exists(output):
        os.unlink(output)
    bb.note("Running: %s" % " ".join(cmd))
    lockfile = bb.utils.lockfile(d.getVar("SEGWAY_SIGN_LOCK")) if lock else None
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True)
    finally:
        if lockfile:
            bb.utils.unlockfile(lockfile)
    if proc.stdout:
        bb.note(proc.stdout.strip())
    if proc.returncode != 0:
        bb.fatal("segway-sign %s failed (exit %d): %s" % (kind, proc.returncode, (proc.stdout or "").strip().splitlines()[-1:]))
    if not os.path.isfile(output) or os.path.getsize(output) == 0:
        bb.fatal("segway-sign %s reported success but %s was not written" % (kind, output))

def segway_add_fit_pubkey(d, dtb, output):
    """Write dtb with the FIT public key of SEGWAY_FIT_CERT (required = "conf") to output."""
    cert = d.getVar("SEGWAY_FIT_CERT")
    segway_require_inputs("fit-pubkey", [dtb])
    if d.getVar(segway_cert_vardeps("SEGWAY_FIT_CERT")) == "none":
        bb.fatal("segway-sign fit-pubkey: certificate %s (SEGWAY_FIT_CERT) not found; U-Boot would boot "
                 "unsigned FITs without it, in either signing mode" % cert)
    cmd = ["segway-sign", "fit", "add-pubkey", "--key", cert, "--dtb", dtb, "--out", output,
           "--key-name-hint", d.getVar("SEGWAY_FIT_KEY_NAME"), "--required", "conf"]
    segway_run_tool(d, "fit-pubkey", cmd, segway_tool_environment(d), output)

python () {
    # Keep the token variables out of every run file of this recipe.
    for name in (d.getVar("SEGWAY_SIGN_ENV_VARS") or "").split():
        d.setVarFlag(name, "unexport", "1")
}
