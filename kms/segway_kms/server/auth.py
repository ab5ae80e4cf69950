"""Server interceptor: find the caller's principal, check RBAC, map errors to gRPC status codes.

On a Unix socket the principal is "group:<socket group>": only members of that group can open the socket
(the directory and socket permissions do the authentication). Over TCP the principal is taken from the
verified mTLS client certificate: its first SAN (e-mail, DNS or URI), else its CN; certificates revoked
by the KMS's own CA are refused.

No request ends in a traceback: bytes that do not parse as the request message and requests with a
malformed field (server/validate.py) are INVALID_ARGUMENT, and every error detail is one line of bounded
length. Only a fault of the service itself is INTERNAL, logged with its traceback.
"""
from __future__ import annotations

import contextvars
import logging

import grpc
from cryptography import x509

from segway_kms import errors
from segway_kms.server import validate

log = logging.getLogger(__name__)

PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar("principal", default="")

_STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BackendError: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigError: grpc.StatusCode.INTERNAL,
}
SERVICE_PREFIX = "/segway.kms.v1.Kms/"
MAX_DETAIL = 512  # characters of an error detail (the grpc-message header; clients cap metadata at 8 KiB)


class _Malformed:
    """What the request deserializer returns for bytes that are not a valid request message."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def error(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"the request is not a valid {self.type_name} message")


def _tolerant(deserializer):
    """The handler's request deserializer, returning _Malformed instead of raising: gRPC itself would log a
    traceback and answer INTERNAL for a request that does not parse."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - DecodeError, or anything else the parser raises on bad bytes
            return _Malformed(type_name)
    return parse


def _tolerant_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of another service (health) with the tolerant deserializer; the behaviour is unchanged."""
    deserializer = _tolerant(handler.request_deserializer)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def unary(request, context):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error()))
            return inner(request, context)
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=deserializer,
                                                   response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        def stream(request, context, send_response_callback=None):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error()))
            if send_response_callback is None:
                return inner(request, context)
            return inner(request, context, send_response_callback=send_response_callback)
        # The health service's Watch answers through a callback when the server supports it.
        stream.experimental_non_blocking = getattr(inner, "experimental_non_blocking", False)
        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=deserializer,
                                                    response_serializer=handler.response_serializer)
    return handler  # streaming requests: none in this server


def detail(exc: Exception) -> str:
    """The error detail sent to the client: one line, at most MAX_DETAIL characters."""
    return errors.clip(str(exc), MAX_DETAIL)


def status_for(exc: errors.KmsError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


def principal_from_certificate(pem: bytes) -> tuple[str, int]:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san if isinstance(n, (x509.RFC822Name, x509.DNSName,
                                                              x509.UniformResourceIdentifier))]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    if not names:
        raise errors.Unauthenticated("the client certificate names no principal")
    return names[0], cert.serial_number


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, rbac, unix_group: str | None = None, is_revoked=None, on_denied=None):
        self._rbac = rbac
        self._on_denied = on_denied or (lambda principal, method, reason: None)
        self._unix_group = unix_group
        self._is_revoked = is_revoked or (lambda serial: False)
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # one guarded handler per method, built once

    def _principal(self, context) -> str:
        if self._unix_group is not None:
            return f"group:{self._unix_group}"
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise errors.Unauthenticated("no client certificate")
        principal, serial = principal_from_certificate(pems[0])
        if self._is_revoked(serial):
            raise errors.Unauthenticated("the client certificate is revoked")
        return principal

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler  # unknown method: UNIMPLEMENTED
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        if not method.startswith(SERVICE_PREFIX) or handler.unary_unary is None:
            wrapped = self._wrapped[method] = _tolerant_handler(handler)  # health: no principal needed
            return wrapped
        name = method[len(SERVICE_PREFIX):]
        inner = handler.unary_unary

        def guarded(request, context):
            principal = ""
            try:
                principal = self._principal(context)
                if isinstance(request, _Malformed):
                    raise request.error()
                validate.check(name, request)
                self._rbac.check(principal, name, request)
                token = PRINCIPAL.set(principal)
                try:
                    return inner(request, context)
                finally:
                    PRINCIPAL.reset(token)
            except errors.KmsError as exc:
                if isinstance(exc, (errors.PermissionDenied, errors.Unauthenticated)):
                    self._on_denied(principal, name, detail(exc))
                context.abort(status_for(exc), detail(exc))
            except grpc.RpcError:
                raise
            except Exception:  # noqa: BLE001 - never leak internals to the client; keep serving
                if context.code() is not None:
                    raise
                log.exception("internal error in %s", name)
                context.abort(grpc.StatusCode.INTERNAL, "internal error (see the daemon log)")

        wrapped = grpc.unary_unary_rpc_method_handler(guarded,
                                                      request_deserializer=_tolerant(handler.request_deserializer),
                                                      response_serializer=handler.response_serializer)
        self._wrapped[method] = wrapped
        return wrapped
