"""Progress reporting for bulk uploads: a tqdm bar when tqdm is installed, else a line on
stderr every few seconds, or a callback given the cumulative number of users written."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from ._errors import InvalidArgument

ProgressArg = bool | Callable[[int], None]
_LINE_EVERY = 5.0  # seconds between two stderr lines without tqdm


class Progress:
    """Reports ``update(total)`` calls; ``close()`` ends the bar or prints the last line."""

    def __init__(
        self, progress: ProgressArg, *, desc: str = "upsert", expected: int | None = None
    ) -> None:
        """expected: how many users there will be, when known (a total and an ETA)."""
        if not (isinstance(progress, bool) or callable(progress)):
            raise InvalidArgument("progress must be a bool or a callable taking an int")
        self._callback = progress if callable(progress) else None
        self._enabled = progress is True
        self._desc = desc
        self._expected = expected
        self._bar: Any = None
        self._shown = 0
        self._started = self._last_line = time.monotonic()
        if self._enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(desc=desc, unit="users", total=expected)

    def update(self, total: int) -> None:
        """``total`` users written so far."""
        if self._callback is not None:
            self._callback(total)
        if self._bar is not None:
            self._bar.update(total - self._shown)
        elif self._enabled and time.monotonic() - self._last_line >= _LINE_EVERY:
            self._line(total)
        self._shown = total

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            self._line(self._shown)

    def _line(self, total: int) -> None:
        now = time.monotonic()
        rate = total / max(now - self._started, 1e-9)
        line = f"{self._desc}: {total:,} users ({rate:,.0f}/s)"
        if self._expected and rate > 0 and total < self._expected:
            left = (self._expected - total) / rate
            line = (
                f"{self._desc}: {total:,} of {self._expected:,} users "
                f"({rate:,.0f}/s, {left:,.0f} s left)"
            )
        print(line, file=sys.stderr, flush=True)
        self._last_line = now
