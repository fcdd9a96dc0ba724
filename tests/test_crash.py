"""kill -9 while writing, restart, check: the short form of tests/crash_test.py."""

from __future__ import annotations

import pytest
from crash_test import run_crash_test


@pytest.mark.timeout(900)
def test_acknowledged_writes_survive_kill_9() -> None:
    # A restart costs ~5-12 s (model load); 10 rounds of <= 3 s writing fit in a few minutes.
    result = run_crash_test(kills=10, writers=4, seed=1, max_write=3.0, max_seconds=780.0)
    report = "\n".join([*result.details[:20], result.info(), result.summary()])
    assert result.completed and result.kills == 10, report
    assert result.acknowledged_writes_checked > 0 and result.acked_ops > 0, report
    assert result.lost == 0, report
    assert result.resurrected == 0, report
    assert result.duplicates == 0, report
    assert result.index_mismatch == 0, report
    assert result.unexpected_errors == 0, report
