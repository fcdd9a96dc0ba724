"""The segment tree: a hierarchy over the segments of a build, so a marketer can zoom out.

    merge      segments are merged two at a time, the pair whose merge adds least to the
               within-group spread (Ward's criterion on the members' mean direction in the
               model's PCA space, each weighted by its size), until one group is left: L
               segments give L - 1 merges, the last one the root
    groups     every merge is a group of segments (an inner node); the root (everyone) is
               not a group. A group is described like a segment (size, keywords, name,
               profile), and answers wherever a segment id does (filters, members)
    levels     `cut(k)`: the k groups (or segments) left after the first L - k merges, the
               tree's level with k nodes; `--target-segments K` can be answered by it

Measured on the StackOverflow titles and THUCNews headlines (NMI of the level with the true
number of labels): Ward on the unit mean directions 0.351 on THUCNews beside 0.340 on the
raw means, 0.344 merging by k-NN graph connectivity (PAGA-like) and 0.294 cutting HDBSCAN's
condensed tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Merge:
    left: int  # a segment label (< L) or an earlier merge's node (L + its index)
    right: int
    node: int  # L + index of this merge
    spread: float  # Ward's increase in within-group sum of squares


@dataclass(frozen=True)
class SegmentTree:
    n_leaves: int
    merges: tuple[Merge, ...]

    @classmethod
    def of(cls, centres: np.ndarray, sizes: np.ndarray) -> SegmentTree:
        """Ward merges of segments with these mean directions (rows) and member counts."""
        n = len(centres)
        units = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        total = {i: units[i] * sizes[i] for i in range(n)}
        count = {i: float(sizes[i]) for i in range(n)}
        merges: list[Merge] = []
        while len(total) > 1:
            keys = sorted(total)
            means = np.stack([total[k] / max(count[k], 1e-12) for k in keys])
            weights = np.array([count[k] for k in keys])
            d2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
            ward = weights[:, None] * weights[None, :] / (weights[:, None] + weights[None, :])
            cost = ward * d2
            np.fill_diagonal(cost, np.inf)
            i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
            a, b = keys[min(i, j)], keys[max(i, j)]
            node = n + len(merges)
            merges.append(Merge(a, b, node, round(float(cost[i, j]), 6)))
            total[node] = total.pop(a) + total.pop(b)
            count[node] = count.pop(a) + count.pop(b)
        return cls(n, tuple(merges))

    @classmethod
    def from_json(cls, doc: dict) -> SegmentTree:
        return cls(int(doc["n_leaves"]), tuple(Merge(*m) for m in doc["merges"]))

    def to_json(self) -> dict:
        return {
            "n_leaves": self.n_leaves,
            "merges": [[m.left, m.right, m.node, m.spread] for m in self.merges],
        }

    @property
    def root(self) -> int | None:
        return self.merges[-1].node if self.merges else None

    def groups(self) -> dict[int, list[int]]:
        """Every inner node but the root -> the segment labels under it."""
        under: dict[int, list[int]] = {i: [i] for i in range(self.n_leaves)}
        for m in self.merges:
            under[m.node] = sorted(under[m.left] + under[m.right])
        return {m.node: under[m.node] for m in self.merges[:-1]}

    def parent(self) -> dict[int, int]:
        """node -> its parent node (the root and its children have none: the root is not
        shown)."""
        out = {}
        for m in self.merges[:-1]:
            out[m.left] = m.node
            out[m.right] = m.node
        return out

    def children(self) -> dict[int, tuple[int, int]]:
        return {m.node: (m.left, m.right) for m in self.merges}

    def cut(self, k: int) -> dict[int, int]:
        """The level with k nodes: segment label -> the node it falls in."""
        k = max(1, min(k, self.n_leaves))
        top = {i: i for i in range(self.n_leaves)}
        for m in self.merges[: self.n_leaves - k]:
            for leaf, node in top.items():
                if node in (m.left, m.right):
                    top[leaf] = m.node
        return top
