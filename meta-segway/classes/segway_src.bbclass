# segway_src.bbclass - build a recipe from a directory of this repository.
#
# Default: externalsrc from the repository kas checked out for this layer
# (${SEGWAY_REPO_DIR}/${SEGWAY_SRC_SUBDIR}). The layer and the sources then come from one commit,
# so no second pin can drift, no network is needed, and editing the sources re-runs the
# build through externalsrc's source checksums.
#
# Set SEGWAY_SRC_URI (and SEGWAY_SRCREV) to fetch a pinned commit instead, e.g. when the
# layer is used without this repository's sources next to it:
#   SEGWAY_SRC_URI = "git://git.example.org/segway.git;protocol=https;branch=main"
#   SEGWAY_SRCREV = "<40-hex commit>"

SEGWAY_SRC_SUBDIR ?= ""
SEGWAY_SRC_URI ??= ""
SEGWAY_SRCREV ??= ""

inherit_defer ${@'externalsrc' if not d.getVar('SEGWAY_SRC_URI') else ''}

EXTERNALSRC = "${@'${SEGWAY_REPO_DIR}/${SEGWAY_SRC_SUBDIR}' if not d.getVar('SEGWAY_SRC_URI') else ''}"
EXTERNALSRC_BUILD = "${@'${WORKDIR}/build' if not d.getVar('SEGWAY_SRC_URI') else ''}"

# An explicit destsuffix: scarthgap unpacks a git URI into ${WORKDIR}/git, wrynose into
# ${UNPACKDIR}/${BP}.
SRC_URI = "${@'${SEGWAY_SRC_URI};destsuffix=segway-src' if d.getVar('SEGWAY_SRC_URI') else ''}"
SRCREV = "${@d.getVar('SEGWAY_SRCREV') or 'INVALID'}"
S = "${@'${UNPACKDIR}/segway-src/${SEGWAY_SRC_SUBDIR}' if d.getVar('SEGWAY_SRC_URI') else '${EXTERNALSRC}'}"

python () {
    if d.getVar('SEGWAY_SRC_URI') and not d.getVar('SEGWAY_SRCREV'):
        raise bb.parse.SkipRecipe("SEGWAY_SRC_URI is set but SEGWAY_SRCREV is not: pin the commit")
}
