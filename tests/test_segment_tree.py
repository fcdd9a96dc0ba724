"""The segment tree and the choice of method, through the real server, client and CLI: two
broad interests of two narrow topics each, built with the real model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from audience.client import AudienceClient, InvalidArgument, NotFound, Profile
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
