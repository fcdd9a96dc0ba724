"""Bearer-token authentication with roles, as one server interceptor.

    reader  Lookalike.*, Segments.*, Predictions.*
    writer  reader + Profiles.*
    admin   writer + Admin.*

Tokens come from configuration as SHA-256 hex digests (never stored in clear); a call sends
`authorization: Bearer <token>`. No token or an unknown one: UNAUTHENTICATED; a role too
low: PERMISSION_DENIED. Health checks and reflection stay open. With no tokens configured,
auth is off (the embedded default for local use, listening on 127.0.0.1).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

import grpc

from ._config import ROLES, hash_token

log = logging.getLogger("audience.server")

RANK = {role: i for i, role in enumerate(ROLES)}
SERVICE_ROLE = {
    "audience.v1.Lookalike": "reader",
    "audience.v1.Segments": "reader",
    "audience.v1.Predictions": "reader",
    "audience.v1.Profiles": "writer",
    "audience.v1.Admin": "admin",
}
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def required_role(method: str) -> str | None:
    """The role a full method name (/pkg.Service/Method) needs; None = open."""
    if method.startswith(OPEN_PREFIXES):
        return None
    service = method.lstrip("/").split("/", 1)[0]
    return SERVICE_ROLE.get(service, "admin")  # anything unknown: the strictest


def _deny(code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler):
    def abort(request, context):  # type: ignore[no-untyped-def]
        context.abort(code, message)

    handler = handler._replace(request_deserializer=None)  # refused unread: bytes never parsed
    if handler.unary_unary:
        return handler._replace(unary_unary=abort)
    if handler.stream_unary:
        return handler._replace(stream_unary=abort)
    if handler.unary_stream:
        return handler._replace(unary_stream=abort)
    return handler._replace(stream_stream=abort)


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, token_roles: Mapping[str, str]) -> None:
        """token_roles: sha256 hex digest of a token -> role."""
        for digest, role in token_roles.items():
            if role not in RANK:
                raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
            if len(digest) != 64:
                raise ValueError("token digests must be sha256 hex (64 characters)")
        self._roles = {d.lower(): r for d, r in token_roles.items()}

    def _role_of(self, metadata: tuple) -> str | None:
        for key, value in metadata or ():
            scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
            if key == "authorization" and scheme.lower() == "bearer" and token.strip():
                digest = hash_token(token.strip())  # the scheme is case-insensitive (RFC 9110)
                for known, role in self._roles.items():
                    if hmac.compare_digest(known, digest):
                        return role
        return None

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = continuation(handler_call_details)
        need = required_role(handler_call_details.method)
        if handler is None or need is None:
            return handler
        role = self._role_of(handler_call_details.invocation_metadata)
        if role is None:
            return _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token (metadata: authorization: Bearer ...)",
                handler,
            )
        if RANK[role] < RANK[need]:
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {role!r} may not call this method; it needs {need!r}",
                handler,
            )
        return handler
