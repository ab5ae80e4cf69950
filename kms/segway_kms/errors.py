"""One exception family; the server maps each class to a gRPC status code, the CLI to an exit code.

Request values repeated in an error message go through clip()."""


class KmsError(Exception):
    """Base class of every error segway-kms raises on purpose."""


class InvalidArgument(KmsError):
    pass


class NotFound(KmsError):
    pass


class AlreadyExists(KmsError):
    pass


class PermissionDenied(KmsError):
    pass


class Unauthenticated(KmsError):
    pass


class FailedPrecondition(KmsError):
    pass


class BackendError(KmsError):
    pass


class ConfigError(KmsError):
    pass


ECHO_LIMIT = 128  # characters of a request value an error detail may repeat


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """A request value as an error detail may repeat it: on one line (control characters escaped) and cut
    at ``limit`` characters with an ellipsis, so that a huge value cannot blow up the detail (it travels in
    the grpc-message header, which clients cap at a few KiB)."""
    text = str(value)
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    if len(text) > limit or len(escaped) > limit:
        return escaped[:limit] + "…"
    return escaped
