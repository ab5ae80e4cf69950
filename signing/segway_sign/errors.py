"""One exception family for segway-sign.

The library raises these; the CLI turns any of them into a one-line message and a non-zero exit
status. Anything else escaping is a bug.
"""


class SegwayError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(SegwayError):
    """Options that contradict each other or name something that does not exist."""

    exit_code = 2


class InputError(SegwayError):
    """A malformed, truncated or unsupported input file."""


class OutputExistsError(SegwayError):
    """The output exists and --force was not given."""


class TokenError(SegwayError):
    """The PKCS#11 module, token, login or key could not be used."""


class PinError(TokenError):
    """The PIN could not be read, or the token refused it."""


class VerificationError(SegwayError):
    """A signature, hash or structure did not verify."""
