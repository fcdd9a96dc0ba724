"""The benchmark data sets, read from ../shared/data (or --data / AUDIENCE_DATA).

Each loader returns users: (user_id, label, texts, attributes). Labels are what a good
lookalike or segment should recover: the StackOverflow tag, the THUCNews topic, the blogger's
industry.
"""

from __future__ import annotations

import csv
import gzip
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class User:
    user_id: str
    label: str
    texts: list[str]
    attributes: dict = field(default_factory=dict)


def _tsv(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def stackoverflow(data: Path, max_texts: int) -> list[User]:
    rows = _tsv(data / "stackoverflow_titles.tsv")
    return [User(f"so-{i}", r["label"], [r["text"]]) for i, r in enumerate(rows)]


def thucnews(data: Path, max_texts: int) -> list[User]:
    rows = _tsv(data / "thucnews_headlines.tsv")
    return [User(f"th-{i}", r["label"], [r["text"]]) for i, r in enumerate(rows)]


def blogs(data: Path, max_texts: int) -> list[User]:
    """One user per blogger: the first `max_texts` posts, gender/age/industry attributes."""
    users: dict[str, User] = {}
    for r in _tsv(data / "blogs_dev.tsv.gz"):
        uid = f"blog-{r['blogger_id']}"
        if uid not in users:
            attrs = {
                "gender": r["gender"],
                "age": float(r["age"]),
                "industry": r["industry"],
                "sign": r["sign"],
            }
            users[uid] = User(uid, r["industry"], [], attrs)
        if len(users[uid].texts) < max_texts and r["text"].strip():
            users[uid].texts.append(r["text"])
    return [u for u in users.values() if u.texts]


DATASETS: dict[str, Callable[[Path, int], list[User]]] = {
    "stackoverflow": stackoverflow,
    "thucnews": thucnews,
    "blogs": blogs,
}
