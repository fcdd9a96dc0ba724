"""The segment tree as the client returns it: segments, the groups above them and the parts
below them, a user's place in it, and what a build reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Segment", "SegmentBuild", "SegmentTree", "UserSegment"]


@dataclass(frozen=True)
class Segment:
    """A group of users: size, share of all users, what it is about, and how stable it is.

    attribute_profile: numeric (mean, median, quartiles) and categorical (shares, lift)
    summaries, decoded from the server's JSON; {} when absent.
    """

    segment_id: str
    size: int
    share: float
    keywords: list[str]
    exemplar_user_ids: list[str]
    persistence: float
    attribute_profile: dict[str, Any]
    cohesion: float = 0.0  # mean cosine of members to the segment centre
    status: str = ""  # lineage against the previous build: kept, split, merged, new
    parents: list[str] = field(default_factory=list)  # previous segment ids it came from
    name: str = ""  # from the top keywords, e.g. "bash / script / command"
    # "segment"; "group": segments merged, above them in the tree; "part": a sub-segment
    kind: str = "segment"
    parent_id: str = ""  # the node above it in the tree ("" at the top level)
    children: list[str] = field(default_factory=list)  # its two nodes below, if split
    split_order: int = 0  # walking down the tree splits it n-th (1 first, 0: never)


@dataclass(frozen=True)
class SegmentTree:
    """The segments of the current model, the groups of segments above them (coarsest
    first), the parts of segments below them (sub-segments), and how the segments were
    found. A group's or a part's id works wherever a segment id does."""

    model_version: str
    segments: list[Segment]
    groups: list[Segment]
    method: str = ""  # e.g. "umap-kmeans", for a build asked for exactly K segments
    method_reason: str = ""  # why that method
    parts: list[Segment] = field(default_factory=list)  # sub-segments, as split off

    def nodes(self) -> list[Segment]:
        return [*self.groups, *self.segments, *self.parts]

    def top_level(self) -> list[Segment]:
        """The nodes without a parent: the coarsest view of the users."""
        return [s for s in [*self.groups, *self.segments] if not s.parent_id]

    def level(self, k: int) -> list[Segment]:
        """The tree's level with k nodes (or the nearest it has): from the top level, the
        nodes are split in their `split_order`, one more node at each step."""
        by_id = {s.segment_id: s for s in self.nodes()}
        frontier = [s.segment_id for s in self.top_level()]
        for node in sorted((s for s in self.nodes() if s.split_order), key=lambda s: s.split_order):
            if len(frontier) >= k:
                break
            if node.segment_id in frontier and node.children:
                at = frontier.index(node.segment_id)
                frontier[at : at + 1] = node.children
        return [by_id[s] for s in frontier]


@dataclass(frozen=True)
class UserSegment:
    """A user's segment and finest part, membership strength in [0, 1], and whether it is an
    outlier."""

    user_id: str
    segment_id: str
    strength: float
    outlier: bool
    part_id: str = ""  # the finest part of the segment it is in ("" when none)


@dataclass(frozen=True)
class SegmentBuild:
    """The new segment model's version, its number of segments, and the build time (s)."""

    model_version: str
    segments: int
    seconds: float
    outlier_share: float = 0.0  # share of users left as outliers
    users: int = 0  # users segmented
    method: str = ""  # how the segments were found (a build asked for K chooses)
    method_reason: str = ""  # why that method
    groups: int = 0  # groups of segments in the segment tree
    parts: int = 0  # parts of segments (sub-segments) in the segment tree
