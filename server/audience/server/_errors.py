"""Engine errors -> gRPC status codes, in one table, applied around every servicer method.

Anything not in the table is a bug: it is logged (type only, never request content) and
answered INTERNAL with a generic message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from audience.index import (
    AudienceError,
    Cancelled,
    ConfigError,
    DataDamaged,
    IndexNotReady,
    InvalidQuery,
    LimitExceeded,
    PreconditionFailed,
    SegmentsNotBuilt,
    StorageFull,
    UnknownJob,
    UnknownSegment,
    UnknownUser,
)

log = logging.getLogger("audience.server")

STATUS_OF: dict[type[AudienceError], grpc.StatusCode] = {
    InvalidQuery: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    UnknownUser: grpc.StatusCode.NOT_FOUND,
    UnknownSegment: grpc.StatusCode.NOT_FOUND,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    IndexNotReady: grpc.StatusCode.UNAVAILABLE,
    SegmentsNotBuilt: grpc.StatusCode.FAILED_PRECONDITION,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    DataDamaged: grpc.StatusCode.DATA_LOSS,
    UnknownJob: grpc.StatusCode.NOT_FOUND,
    Cancelled: grpc.StatusCode.CANCELLED,
}
CODE_OF_ERROR_TYPE = {cls.__name__: code.name for cls, code in STATUS_OF.items()}
CODE_OF_ERROR_TYPE["Interrupted"] = grpc.StatusCode.ABORTED.name  # a restart ended the job


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("RPC %s failed with %s", method, type(exc).__name__)
    context.abort(code, message)


class _Undecodable:
    """Stands in for a request message that did not parse (e.g. a string field not UTF-8)."""


UNDECODABLE = _Undecodable()


def _lenient(deserializer: Callable | None) -> Callable | None:
    """A deserializer that returns UNDECODABLE instead of failing the call with INTERNAL."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others
            return UNDECODABLE

    return parse


def _checked(request: Any) -> Any:
    if request is UNDECODABLE:
        raise InvalidQuery("request", "not a valid message (string fields must be UTF-8)")
    return request


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _checked(request)


def _wrap_unary(fn: Callable, method: str, streaming_request: bool = False) -> Callable:
    @functools.wraps(fn)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            request = _checked_stream(request) if streaming_request else _checked(request)
            return fn(request, context)
        except Exception as exc:  # noqa: BLE001 - mapped below; abort raises
            if _is_abort(exc):
                raise
            _abort(context, exc, method)

    return wrapper


def _wrap_stream(fn: Callable, method: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(_checked(request), context)
        except Exception as exc:  # noqa: BLE001
            if _is_abort(exc):
                raise
            _abort(context, exc, method)

    return wrapper


def _is_abort(exc: Exception) -> bool:
    # context.abort() sets the status and raises a bare Exception(); let it through.
    return type(exc) is Exception and not exc.args


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so engine errors become the status codes in STATUS_OF.

    gRPC asks on every call; a method's wrapped handler is made once and kept.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(continuation(handler_call_details), method)
            if wrapped is not None:
                self._wrapped[method] = wrapped
        return wrapped

    @staticmethod
    def _wrap(handler, method: str):
        if handler is None:
            return None
        handler = handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(
                stream_unary=_wrap_unary(handler.stream_unary, method, streaming_request=True)
            )
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))
        return handler  # no bidirectional streams in this API
