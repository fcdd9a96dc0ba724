"""Errors raised by the Audience client.

Every public method raises one of these, never a raw ``grpc.RpcError``: status codes are
mapped back to typed exceptions in one place, :func:`map_rpc_error`, and the original gRPC
error stays reachable as ``__cause__``.

Our exception hierarchy:

* AudienceError            (``code``: the gRPC status name, ``details``: the server's message)
  + InvalidArgument        INVALID_ARGUMENT; also raised client-side for malformed input
  + NotFound               NOT_FOUND
  + FailedPrecondition     FAILED_PRECONDITION (e.g. no index or segments built yet)
  + ResourceExhausted      RESOURCE_EXHAUSTED (limits, message size, quota)
  + Unavailable            UNAVAILABLE (server down, loading or rebuilding; retried)
  + Unauthenticated        UNAUTHENTICATED
  + PermissionDenied       PERMISSION_DENIED
  + DeadlineExceeded       DEADLINE_EXCEEDED
  + Cancelled              CANCELLED
  + Unimplemented          UNIMPLEMENTED
  + ServerError            INTERNAL, UNKNOWN, DATA_LOSS and every other status
"""

from __future__ import annotations

import grpc

__all__ = [
    "AudienceError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "map_rpc_error",
]


class AudienceError(Exception):
    """Base class of every client error.

    ``code`` is the gRPC status name (``"INVALID_ARGUMENT"``), ``details`` the message.
    """

    default_code = "UNKNOWN"

    def __init__(self, details: str = "", *, code: str | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.code}: {self.details}" if self.details else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, details={self.details!r})"


class InvalidArgument(AudienceError):
    default_code = "INVALID_ARGUMENT"


class NotFound(AudienceError):
    default_code = "NOT_FOUND"


class FailedPrecondition(AudienceError):
    default_code = "FAILED_PRECONDITION"


class ResourceExhausted(AudienceError):
    default_code = "RESOURCE_EXHAUSTED"


class Unavailable(AudienceError):
    default_code = "UNAVAILABLE"


class Unauthenticated(AudienceError):
    default_code = "UNAUTHENTICATED"


class PermissionDenied(AudienceError):
    default_code = "PERMISSION_DENIED"


class DeadlineExceeded(AudienceError):
    default_code = "DEADLINE_EXCEEDED"


class Cancelled(AudienceError):
    default_code = "CANCELLED"


class Unimplemented(AudienceError):
    default_code = "UNIMPLEMENTED"


class ServerError(AudienceError):
    default_code = "INTERNAL"


# The one table: gRPC status -> exception class. Statuses missing here become ServerError.
_ERRORS_BY_STATUS: dict[grpc.StatusCode, type[AudienceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
}


def rpc_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a gRPC error, or None when it carries none."""
    code = getattr(exc, "code", None)
    if not callable(code):
        return None
    try:
        value = code()
    except Exception:  # a half-built call object; treat as "no status"
        return None
    return value if isinstance(value, grpc.StatusCode) else None


def map_rpc_error(exc: grpc.RpcError) -> AudienceError:
    """Translate a gRPC error into the matching :class:`AudienceError` subclass.

    Use as ``raise map_rpc_error(exc) from exc``.
    """
    code = rpc_code(exc)
    details_fn = getattr(exc, "details", None)
    details = details_fn() if callable(details_fn) else None
    if not details:
        details = str(exc) if code is None else ""
    cls = _ERRORS_BY_STATUS.get(code, ServerError) if code is not None else ServerError
    return cls(details or "", code=code.name if code is not None else "UNKNOWN")
