"""Call policies shared by the sync and asyncio clients.

Each is a small state object that decides; the clients only run the loop and sleep
(``time.sleep`` or ``asyncio.sleep``), so the decisions live in one place::

    attempts = Attempts(timeout, retries, backoff)
    while True:
        try:
            return call(request, timeout=attempts.timeout())
        except grpc.RpcError as exc:
            sleep(attempts.backoff(exc))  # raises the mapped error when it is time to stop
"""

from __future__ import annotations

import random
import time

import grpc

from ._errors import Unavailable, map_rpc_error, rpc_code

MAX_BACKOFF = 10.0  # seconds; the longest pause between two attempts
HEALTH_SERVING = 1
_HEALTH_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
# Not up yet, or up but its health status for "" not set yet (grpc's HealthServicer: NOT_FOUND).
_READY_TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND,
)


class Attempts:
    """Retry schedule for one call: UNAVAILABLE only, at most ``retries`` more attempts.

    Pauses start at ``backoff`` seconds and double (jittered to 50-150 %, capped at
    MAX_BACKOFF); no attempt starts past the call's deadline (``timeout`` seconds from now,
    None for none).
    """

    def __init__(self, timeout: float | None, retries: int, backoff: float) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._left = retries
        self._pause = backoff

    def timeout(self) -> float | None:
        """Seconds left until the deadline, for the next attempt."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def backoff(self, exc: grpc.RpcError) -> float:
        """Seconds to pause before retrying after ``exc``; raises the mapped error instead
        when ``exc`` is not retryable, no attempt is left, or the deadline would pass."""
        if rpc_code(exc) is not grpc.StatusCode.UNAVAILABLE or self._left <= 0:
            raise map_rpc_error(exc) from exc
        pause = min(self._pause, MAX_BACKOFF) * random.uniform(0.5, 1.5)
        if self._deadline is not None and time.monotonic() + pause >= self._deadline:
            raise map_rpc_error(exc) from exc
        self._left -= 1
        self._pause *= 2
        return pause


class ReadyWait:
    """Polling the standard health service until it answers SERVING, for ``timeout`` s.

    UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND (server not up yet) and non-SERVING answers
    are waited out; any other status (e.g. UNIMPLEMENTED, UNAUTHENTICATED) is raised at once.
    """

    def __init__(self, timeout: float, target: str) -> None:
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._target = target
        self._pause = 0.05
        self._last = "no answer"

    def attempt_timeout(self) -> float:
        """Deadline for one health check, seconds."""
        return max(0.05, min(5.0, self._deadline - time.monotonic()))

    def serving(self, status: int) -> bool:
        """Record a health answer; True when the server is SERVING."""
        self._last = _HEALTH_NAMES.get(status, str(status))
        return status == HEALTH_SERVING

    def failed(self, exc: grpc.RpcError) -> None:
        """Record a failed check; raises the mapped error unless it is worth waiting out."""
        code = rpc_code(exc)
        if code not in _READY_TRANSIENT:
            raise map_rpc_error(exc) from exc
        self._last = code.name

    def pause(self) -> float:
        """Seconds to sleep before the next check; raises Unavailable when time is up."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(
                f"{self._target} not SERVING after {self._timeout:g} s (last: {self._last})"
            )
        pause, self._pause = min(self._pause, left), min(self._pause * 2, 1.0)
        return pause
