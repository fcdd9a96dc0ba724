"""Internal id (iid) -> user id, for turning search results into users.

A numpy object array indexed by iid (None where no user has that iid) instead of a dict: a
lookalike maps a hundred random iids out of a million to user ids, and one fancy-indexing call
in C lets the CPU overlap those memory misses, where a Python loop over a dict takes them one
after another. Measured with a million users and cold caches (2-core machine): 42 us for 100
ids, against 156 us for the dict lookups. It is also smaller than that dict: 8 bytes a slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class UserIdTable:
    def __init__(self) -> None:
        self._ids = np.full(0, None, dtype=object)
        self._count = 0

    def set(self, iid: int, user_id: str) -> None:
        self.set_many(np.array([iid], np.int64), [user_id])

    def set_many(self, iids: np.ndarray, user_ids: Sequence[str]) -> None:
        """`set` for each pair (iids each once)."""
        if not len(iids):
            return
        top = int(np.max(iids))
        if top >= len(self._ids):
            grown = np.full(max(top + 1, int(len(self._ids) * 1.25) + 1024), None, dtype=object)
            grown[: len(self._ids)] = self._ids
            self._ids = grown
        self._count += int(np.count_nonzero(self._ids[iids] == None))  # noqa: E711
        column = np.empty(len(user_ids), dtype=object)
        column[:] = user_ids
        self._ids[iids] = column

    def pop(self, iid: int) -> None:
        if 0 <= iid < len(self._ids) and self._ids[iid] is not None:
            self._ids[iid] = None
            self._count -= 1

    def __contains__(self, iid: int) -> bool:
        return 0 <= iid < len(self._ids) and self._ids[iid] is not None

    def __getitem__(self, iid: int) -> str:
        user_id = self._ids[iid] if 0 <= iid < len(self._ids) else None
        if user_id is None:
            raise KeyError(iid)
        return user_id

    def __len__(self) -> int:
        return self._count

    def take(self, iids: np.ndarray) -> list[str]:
        """User ids of these iids, in order (each must be present)."""
        return self._ids[iids].tolist()

    def contains(self, iids: np.ndarray) -> np.ndarray:
        """Bool per iid: whether it has a user (any int64 iid; out of range is False).
        At 1M iids 0.06 s, where np.setdiff1d against iids() took 1.3-1.6 s."""
        iids = np.asarray(iids, np.int64)
        found = np.zeros(len(iids), bool)
        inside = (iids >= 0) & (iids < len(self._ids))
        found[inside] = self._ids[iids[inside]] != None  # noqa: E711 (elementwise)
        return found

    def present(self) -> np.ndarray:
        """Bool per iid from 0 up to the largest seen: whether it has a user."""
        return self._ids != None  # noqa: E711 (elementwise)

    def iids(self) -> np.ndarray:
        """Every iid that has a user, ascending."""
        return np.flatnonzero(self._ids != None)  # noqa: E711 (elementwise, not identity)

    def items(self) -> list[tuple[int, str]]:
        iids = self.iids()
        return list(zip(iids.tolist(), self._ids[iids].tolist()))
