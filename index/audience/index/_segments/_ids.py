"""Stable segment ids: a rebuild matches new segments to the old ones by member overlap
(Jaccard) and keeps their ids; the lineage (kept, split, merged, new, gone) is recorded."""

from __future__ import annotations

import numpy as np


def match_segments(
    new_members: dict[int, np.ndarray],
    old_members: dict[str, np.ndarray],
    next_number: int,
    prefix: str = "seg",
) -> tuple[dict[int, str], dict[int, tuple[str, list[str]]], list[dict], int]:
    """Give new clusters ids: the old id of the segment they mostly continue, else a new one
    (`prefix`-NNNN: "seg" for segments, "grp" for the tree's groups of segments).

    Returns (id per label, (status, parents) per label, lineage entries, next free number).
    """
    pairs = []
    for lab, mem in new_members.items():
        for sid, old in old_members.items():
            inter = len(np.intersect1d(mem, old, assume_unique=True))
            if inter:
                union = len(mem) + len(old) - inter
                pairs.append((inter / union, inter, lab, sid))
    pairs.sort(reverse=True)
    id_of: dict[int, str] = {}
    taken: set[str] = set()
    for jaccard, _, lab, sid in pairs:
        if jaccard >= 0.5 and lab not in id_of and sid not in taken:
            id_of[lab], _ = sid, taken.add(sid)
    status: dict[int, tuple[str, list[str]]] = {}
    for lab, mem in new_members.items():
        sources = [(inter, sid) for _, inter, lb, sid in pairs if lb == lab]
        sources.sort(reverse=True)
        parents = [sid for inter, sid in sources if inter >= 0.2 * len(mem)]
        if lab in id_of:
            status[lab] = ("kept", [id_of[lab]])
        else:
            id_of[lab] = f"{prefix}-{next_number:04d}"
            next_number += 1
            if len(parents) >= 2:
                status[lab] = ("merged", parents)
            elif len(parents) == 1:
                status[lab] = ("split", parents)
            else:
                status[lab] = ("new", [])
    lineage = [
        {"segment_id": id_of[lab], "status": st, "parents": ps}
        for lab, (st, ps) in sorted(status.items())
    ]
    for sid in old_members:
        if sid not in taken:
            heirs = [id_of[lab] for lab, (st, ps) in status.items() if sid in ps]
            lineage.append({"segment_id": sid, "status": "gone", "children": heirs})
    return id_of, status, lineage, next_number
