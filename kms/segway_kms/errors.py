"""One exception family; the server maps each class to a gRPC status code, the CLI to an exit code."""


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
