"""Client configuration: one frozen value object built from the constructor's keywords."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from ._errors import InvalidArgument
from ._policy import Attempts

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0  # seconds, per call
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _UseClientDefault:
    """Type of :data:`DEFAULT`: "use the client's timeout" (``None`` means no deadline)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _UseClientDefault()
Timeout = float | None | _UseClientDefault


@dataclass(frozen=True)
class ClientOptions:
    """Everything a client needs to open its channel and make calls.

    timeout: default deadline per call, seconds; None means no deadline.
    retries / retry_backoff: extra attempts of unary calls on UNAVAILABLE, and the first
    pause between attempts in seconds (doubled each time, jittered).
    max_message_bytes: largest message sent or received.
    """

    target: str | tuple[str, ...] = DEFAULT_TARGET
    primary: str | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    token: str | None = field(default=None, repr=False)
    retries: int = 3
    retry_backoff: float = 0.2
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    root_certificates: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.target, (list, tuple)) and self.target:
            object.__setattr__(self, "target", tuple(self.target))
            if not all(isinstance(t, str) and t for t in self.target):
                raise InvalidArgument("target: every address must be a non-empty str")
        elif not isinstance(self.target, str) or not self.target:
            raise InvalidArgument(
                "target must be a non-empty str such as '127.0.0.1:50051' (or a list of them)"
            )
        if self.primary is not None and (not isinstance(self.primary, str) or not self.primary):
            raise InvalidArgument("primary must be a non-empty str such as '10.0.0.1:50051'")
        if self.timeout is not None and not _is_number(self.timeout):
            raise InvalidArgument("timeout must be a number of seconds or None")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise InvalidArgument("retries must be an int >= 0")
        if not _is_number(self.retry_backoff) or self.retry_backoff < 0:
            raise InvalidArgument("retry_backoff must be a number of seconds >= 0")
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes <= 0:
            raise InvalidArgument("max_message_bytes must be a positive int")
        if self.root_certificates is None and (self.private_key or self.certificate_chain):
            raise InvalidArgument(
                "private_key / certificate_chain need root_certificates (TLS is off without them)"
            )

    def resolve_timeout(self, timeout: Timeout) -> float | None:
        """The deadline for one call in seconds: the client default unless overridden."""
        if isinstance(timeout, _UseClientDefault):
            return self.timeout
        if timeout is not None and not _is_number(timeout):
            raise InvalidArgument("timeout must be a number of seconds or None")
        return timeout

    def attempts(self, timeout: Timeout) -> Attempts:
        """The retry schedule of one call with this per-call ``timeout``."""
        return Attempts(self.resolve_timeout(timeout), self.retries, self.retry_backoff)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Metadata sent with every call: the bearer token, when there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    @property
    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials when root certificates are given, None for plaintext."""
        if self.root_certificates is None:
            return None
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
