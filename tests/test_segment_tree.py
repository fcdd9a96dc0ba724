"""The segment tree and the choice of method, through the real server, client and CLI: two
broad interests of two narrow topics each, built with the real model; and the parts below the
segments on vectors of a known nested shape, through the segment builder."""

from __future__ import annotations

import random

import numpy as np
import pytest

from audience.client import AudienceClient, InvalidArgument, NotFound, Profile
from audience.index import PcaReducer, Population, SegmentBuilder, SegmentParams
from audience.index._segments import ClusterResult
from audience.server._cli import main

BROAD = {
    "food": {
        "baking": "bread oven flour dough yeast bake loaf crust sourdough pastry".split(),
        "grilling": "barbecue grill steak charcoal smoke burger ribs skewer brisket".split(),
    },
    "software": {
        "python": "python pandas numpy django pip virtualenv pytest traceback".split(),
        "frontend": "javascript css html react browser dom webpack npm stylesheet".split(),
    },
}
NARROW = {narrow: broad for broad, topics in BROAD.items() for narrow in topics}


# What the narrow topics of one broad interest share.
SHARED = {
    "food": "food recipe kitchen dinner tasty cook".split(),
    "software": "code developer app bug build release".split(),
}


def population(n_per_topic: int, seed: int = 0, prefix: str = "") -> list[Profile]:
    rng = random.Random(seed)
    out = []
    for broad, topics in BROAD.items():
        for narrow, words in topics.items():
            for i in range(n_per_topic):
                texts = [
                    " ".join(rng.choices(words, k=6) + rng.choices(SHARED[broad], k=3))
                    for _ in range(2)
                ]
                out.append(Profile(f"{prefix}{narrow}-{i}", texts=texts))
    return out


def narrow_of(uid: str) -> str:
    return uid.split("-")[0].removeprefix("new")


@pytest.fixture
def tree_server(start_server):
    server = start_server(segment_min_group_size=0, attributes=())
    client = AudienceClient(f"127.0.0.1:{server.port}", timeout=300)
    client.upsert_users(population(40))
    client.rebuild_index()
    build = client.build_segments(target_segments=4)
    yield server, client, build
    client.close()


def members(client: AudienceClient, segment_id: str) -> set[str]:
    return {u.user_id for u in client.stream_segment_members(segment_id)}


def test_tree_top_level_separates_the_broad_interests(tree_server) -> None:
    _, c, build = tree_server
    # The build says how it found its 4 segments, and why.
    assert build.segments == 4 and build.groups == 2
    assert build.method in ("kmeans", "umap-kmeans", "tree") and "agreement" in build.method_reason
    tree = c.segment_tree()
    assert tree.method == build.method and tree.method_reason == build.method_reason
    # Each segment is one narrow topic.
    for s in tree.segments:
        topics = {narrow_of(u) for u in members(c, s.segment_id)}
        assert len(topics) == 1, (s.segment_id, topics)
        assert s.kind == "segment" and s.name and s.parent_id
    # The top level: two groups, each one broad interest (its two narrow topics).
    top = tree.top_level()
    assert [t.kind for t in top] == ["group", "group"]
    found = []
    for group in top:
        inside = members(c, group.segment_id)
        assert len(inside) == group.size == 80
        assert {NARROW[narrow_of(u)] for u in inside} == {NARROW[narrow_of(next(iter(inside)))]}
        assert len(group.children) == 2 and group.name
        found.append(NARROW[narrow_of(next(iter(inside)))])
        # the group's children are segments whose parent is the group
        for child in group.children:
            assert c.get_segment(child).parent_id == group.segment_id
    assert sorted(found) == ["food", "software"]


def test_a_group_filters_like_a_segment(tree_server) -> None:
    _, c, _ = tree_server
    tree = c.segment_tree()
    food = next(g for g in tree.top_level() if "baking-0" in members(c, g.segment_id))
    assert {"food", "recipe", "kitchen"} & set(food.keywords)  # what its topics share
    assert c.estimate_reach(segment_ids=[food.segment_id]).reach == 80
    found = c.find_lookalikes(["baking-0"], k=50, segment_ids=[food.segment_id])
    assert len(found.users) == 50 and found.eligible == 79  # the seed is not in its audience
    assert all(NARROW[narrow_of(u.user_id)] == "food" for u in found.users)
    away = c.find_lookalikes(["baking-0"], k=50, exclude_segment_ids=[food.segment_id])
    assert all(NARROW[narrow_of(u.user_id)] == "software" for u in away.users)
    with pytest.raises(NotFound, match="grp-9999"):
        c.estimate_reach(segment_ids=["grp-9999"])


def test_parts_go_below_the_segments_and_every_level_exists(tree_server, capsys) -> None:
    _, c, build = tree_server
    tree = c.segment_tree()
    assert build.parts == len(tree.parts) > 0
    nodes = {s.segment_id: s for s in tree.nodes()}
    for part in tree.parts:
        assert part.kind == "part" and part.segment_id.startswith("sub-")
        above = nodes[part.parent_id]
        assert above.kind in ("segment", "part") and part.segment_id in above.children
        # a part lies in its segment's topic, and answers wherever a segment id does
        inside = members(c, part.segment_id)
        assert len(inside) == part.size > 0
        assert len({narrow_of(u) for u in inside}) == 1
        assert c.estimate_reach(segment_ids=[part.segment_id]).reach == part.size
    # a user's membership names its segment and its finest part
    leaf = next(p for p in tree.parts if not p.children)
    user = sorted(members(c, leaf.segment_id))[0]
    (m,) = c.get_user_segments([user])
    assert m.part_id == leaf.segment_id and m.segment_id in {s.segment_id for s in tree.segments}
    # a profile the build never saw is placed in a segment and a part the same way
    texts = [t.text for t in c.get_user(user).profile.texts]
    (placed,) = c.assign_segments([Profile("unseen", texts=texts)])
    assert (placed.segment_id, placed.part_id) == (m.segment_id, m.part_id)
    for split in [s for s in tree.nodes() if s.children]:
        below = [members(c, child) for child in split.children]
        assert set().union(*below) == members(c, split.segment_id) and not below[0] & below[1]
    # Every level from the top one to the finest: k nodes that hold every clustered user once.
    leaves = [s for s in [*tree.segments, *tree.parts] if not s.children]
    everyone = set().union(*(members(c, s.segment_id) for s in tree.segments))
    for k in range(2, len(leaves) + 1):
        level = tree.level(k)
        assert len(level) == k
        held = [members(c, s.segment_id) for s in level]
        assert sum(map(len, held)) == len(everyone) and set().union(*held) == everyone
    assert [s.segment_id for s in tree.level(4)] != [s.segment_id for s in tree.level(5)]
    assert {s.kind for s in tree.level(len(leaves))} <= {"segment", "part"}
    # The CLI draws the parts under their segments.
    assert main(["segments", "list", "--target", c.target, "--tree"]) == 0
    drawn = capsys.readouterr().out.splitlines()
    assert f"with {len(tree.parts)} parts below them" in drawn[0]
    for part in tree.parts:
        line = next(x for x in drawn if x.lstrip().startswith(part.segment_id + " "))
        above = next(x for x in drawn if x.lstrip().startswith(part.parent_id + " "))
        assert len(line) - len(line.lstrip()) == len(above) - len(above.lstrip()) + 2


def test_tree_survives_restart_and_ids_stay_across_a_rebuild(tree_server, start_server) -> None:
    server, c, _ = tree_server
    before = c.segment_tree()
    c.upsert_users(population(2, seed=9, prefix="new"))  # +5% users
    c.build_segments(target_segments=4)
    after = c.segment_tree()
    assert {s.segment_id for s in after.segments} == {s.segment_id for s in before.segments}
    assert {g.segment_id for g in after.groups} == {g.segment_id for g in before.groups}
    assert all(g.status == "kept" for g in after.groups)
    parents = {s.segment_id: s.parent_id for s in after.segments}
    assert parents == {s.segment_id: s.parent_id for s in before.segments}

    data_dir = server.config.engine.data_dir
    server.stop()
    again = start_server(data_dir=data_dir, attributes=())
    with AudienceClient(f"127.0.0.1:{again.port}") as c2:
        reloaded = c2.segment_tree()
        assert reloaded == after
        group = reloaded.groups[0]
        assert members(c2, group.segment_id) == set().union(
            *(members(c2, child) for child in group.children)
        )


def test_method_can_be_asked_for_and_bad_ones_are_refused(tree_server) -> None:
    _, c, _ = tree_server
    done = c.build_segments(target_segments=4, method="kmeans")
    assert done.method == "kmeans" and done.method_reason == "asked for"
    with pytest.raises(InvalidArgument, match="method"):
        c.build_segments(target_segments=4, method="spectral")


def test_ward_tree_cuts_and_groups() -> None:
    """The tree alone: two pairs of close centres merge first; each level has k nodes."""
    from audience.index._segments._tree import SegmentTree

    centres = np.array([[1, 0, 0], [0.95, 0.3, 0], [0, 0, 1], [0, 0.3, 0.95]], float)
    tree = SegmentTree.of(centres, np.array([10, 10, 10, 10], float))
    assert sorted(map(sorted, tree.groups().values())) == [[0, 1], [2, 3]]
    assert len(set(tree.cut(2).values())) == 2 and tree.cut(2)[0] == tree.cut(2)[1]
    assert len(set(tree.cut(4).values())) == 4 and len(set(tree.cut(1).values())) == 1
    assert SegmentTree.from_json(tree.to_json()) == tree


def nested_blobs(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two segments, each of two halves, each of two quarters: unit vectors, the segment and
    the quarter (0-7) of each."""
    rng = np.random.default_rng(seed)
    eye = np.eye(16)
    rows, segment, quarter = [], [], []
    for q in range(8):
        s, half, part = q // 4, (q // 2) % 2, q % 2
        centre = 6 * eye[s] + (2.5 if half else -2.5) * eye[2 + s] + (1 if part else -1) * eye[4]
        rows.append(centre + rng.normal(0, 0.15, (n_per, 16)))
        segment += [s] * n_per
        quarter += [q] * n_per
    x = np.concatenate(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.array(segment), np.array(quarter)


class KnownSegments:
    """The clusterer: the two segments are given, so only the parts are found."""

    def __init__(self, segment: np.ndarray) -> None:
        self.segment = segment

    def cluster(self, space: np.ndarray) -> ClusterResult:
        labels = self.segment[: len(space)].astype(np.int32)
        return ClusterResult(labels, np.ones(len(space), np.float32), {0: 1.0, 1: 1.0})

    def __repr__(self) -> str:
        return "known"


def build_nested(x: np.ndarray, segment: np.ndarray, previous=None):
    iids = np.arange(len(x), dtype=np.int64)
    users = Population(
        iids, x, {int(i): f"u{i}" for i in iids}, lambda wanted: {int(i): ([], {}) for i in wanted}
    )
    builder = SegmentBuilder(
        SegmentParams(sample_size=len(x), min_cluster_size=20),
        reducer=PcaReducer(),
        clusterer=KnownSegments(segment),
    )
    return builder.build(users, previous)


def test_parts_find_the_structure_within_segments_and_keep_their_ids() -> None:
    x, segment, quarter = nested_blobs(30, seed=0)
    model = build_nested(x, segment)
    leaves = [p for p in model.parts if not p.children]
    # Each segment split in halves, each half in quarters: the 8 leaves are the 8 quarters.
    assert len(model.parts) == 12 and len(leaves) == 8
    for p in leaves:
        held = model.member_iids[model.member_parts == p.label]
        assert len(set(quarter[held])) == 1 and len(held) == p.size == 30
    # The first splits are the segments' (halves before quarters), then the halves'.
    nodes = sorted((s for s in model.nodes() if s.split_order), key=lambda s: s.split_order)
    assert [s.kind for s in nodes] == ["segment", "segment", "part", "part", "part", "part"]
    # +5% users from the same quarters: every part keeps its id.
    more, more_segment, _ = nested_blobs(2, seed=1)
    again = build_nested(np.concatenate([x, more]), np.concatenate([segment, more_segment]), model)
    assert {p.segment_id for p in again.parts} == {p.segment_id for p in model.parts}
    assert all(p.status == "kept" for p in again.parts)
    shape = {p.segment_id: (p.parent_id, tuple(p.children)) for p in model.parts}
    assert {p.segment_id: (p.parent_id, tuple(p.children)) for p in again.parts} == shape


def test_the_tree_method_asked_for_more_than_hdbscan_finds_goes_below_the_segments() -> None:
    x, segment, quarter = nested_blobs(60, seed=0)
    iids = np.arange(len(x), dtype=np.int64)
    users = Population(
        iids, x, {int(i): f"u{i}" for i in iids}, lambda wanted: {int(i): ([], {}) for i in wanted}
    )
    free = SegmentBuilder(SegmentParams(min_cluster_size=100)).build(users)
    assert len(free.segments) < 8  # segments of at least 100 users: the quarters are 60
    params = SegmentParams(target_segments=8, method="tree", min_cluster_size=100)
    model = SegmentBuilder(params).build(users)
    assert len(model.segments) == 8 and model.stats["choice"]["method"] == "tree"
    for seg in model.segments:
        held = model.member_iids[model.member_labels == seg.label]
        assert len(set(quarter[held])) == 1 and len(held) == 60
