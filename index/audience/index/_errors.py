"""Errors raised by the engine. The server maps each class to one gRPC status code.

AudienceError
├── InvalidQuery          bad input; the message names the field   (INVALID_ARGUMENT)
├── ConfigError           a setting that cannot work; names it     (FAILED_PRECONDITION)
├── UnknownUser           a user id that is not stored             (NOT_FOUND)
├── UnknownSegment        a segment id that does not exist          (NOT_FOUND)
├── LimitExceeded         a request over a configured limit         (RESOURCE_EXHAUSTED)
├── StorageFull           the data dir's disk is full              (RESOURCE_EXHAUSTED)
├── IndexNotReady         still loading or closed                   (UNAVAILABLE)
├── SegmentsNotBuilt      segment query before any build            (FAILED_PRECONDITION)
├── PreconditionFailed    the data dir or model cannot serve this   (FAILED_PRECONDITION)
└── DataDamaged           stored data failed its checksum           (DATA_LOSS)

InvalidQuery and ConfigError are also ValueErrors, so code that validates with plain Python
habits (`except ValueError`) sees them.
"""

from __future__ import annotations


class AudienceError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidQuery(AudienceError, ValueError):
    """The request is malformed. The message starts with the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ConfigError(AudienceError, ValueError):
    """A configuration value (flag, TOML key, attribute spec) is unusable; names the key."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class UnknownUser(AudienceError, KeyError):
    def __init__(self, user_ids: list[str], field: str = "user_id") -> None:
        self.user_ids = list(user_ids)
        self.field = field
        shown = ", ".join(repr(u) for u in self.user_ids[:5])
        more = f" and {len(self.user_ids) - 5} more" if len(self.user_ids) > 5 else ""
        super().__init__(f"{field}: unknown user id {shown}{more}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class UnknownSegment(AudienceError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class LimitExceeded(AudienceError):
    def __init__(self, field: str, value: int, limit: int) -> None:
        self.field = field
        super().__init__(f"{field}: {value} is over the limit of {limit}")


class StorageFull(AudienceError):
    """No space left on the data dir's disk (or over quota). The message says what was not
    written; what was acknowledged before is kept."""


class IndexNotReady(AudienceError):
    pass


class SegmentsNotBuilt(AudienceError):
    pass


class PreconditionFailed(AudienceError):
    pass


class DataDamaged(AudienceError):
    """Stored data does not match its checksum (bit rot, a tampered file) and could not be
    recovered on the spot; `audience check` finds and repairs it."""


class Cancelled(AudienceError):
    """A long job was cancelled (CancelJob, or the server stopping); what was served before
    it is still served."""


class UnknownJob(AudienceError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])
