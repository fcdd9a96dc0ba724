"""The HTML segment report: real files in tmp_path from a small synthetic SegmentModel."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from audience.index._segments import Segment, SegmentModel, SegmentParams
from audience.server._report import write_report

PNG = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert('x')</script>"
CHINESE = "烹饪"
DIM = 8


def _model(
    sizes: list[int],
    n_outliers: int,
    segments: list[Segment],
    seed: int = 0,
    stats: dict | None = None,
    lineage: list[dict] | None = None,
) -> SegmentModel:
    """Well separated clusters of `sizes` points in 8-d (rows L2-normalised) + outliers."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM)[: len(sizes)]
    parts = [c + 0.05 * rng.standard_normal((n, DIM)) for c, n in zip(centres, sizes)]
    parts.append(rng.standard_normal((n_outliers, DIM)))
    coords = np.concatenate(parts).astype(np.float32)
    coords /= np.linalg.norm(coords, axis=1, keepdims=True)
    labels = np.concatenate(
        [np.full(n, i) for i, n in enumerate(sizes)] + [np.full(n_outliers, -1)]
    ).astype(np.int32)
    n = len(coords)
    return SegmentModel(
        version="v-test",
        params=SegmentParams(),
        segments=segments,
        pca_mean=np.zeros(16, np.float32),
        pca_components=np.eye(DIM, 16, dtype=np.float32),
        fit_coords=coords,
        fit_labels=labels,
        member_iids=np.arange(n),
        member_labels=labels,
        member_strength=np.ones(n, np.float32),
        lineage=lineage or [],
        stats=stats or {},
    )


def _three_segment_model() -> SegmentModel:
    age = {
        "type": "numeric",
        "count": 120,
        "mean": 34.2,
        "median": 33.0,
        "q1": 27.0,
        "q3": 41.0,
        "min": 18.0,
        "max": 70.0,
        "population_mean": 38.1,
        "population_median": 37.5,
    }
    segments = [
        Segment(
            segment_id="seg-0001",
            label=0,
            size=120,
            share=0.375,
            keywords=[CHINESE, "面包", "sourdough"],
            exemplar_user_ids=["u-1", "用户-2"],
            persistence=1.0,
            cohesion=0.91,
            status="kept",
            parents=["seg-0001"],
            attribute_profile={
                "age": age,
                "region": {
                    "type": "categorical",
                    "count": 118,
                    "values": [
                        {"value": "北京", "share": 0.5, "population_share": 0.2, "lift": 2.5},
                        {"value": "paris", "share": 0.3, "population_share": 0.4, "lift": 0.75},
                        {"value": "(other)", "share": 0.2, "population_share": 0.4, "lift": 0.5},
                    ],
                },
                # Withheld numbers and a categorical whose every value was too rare.
                "income": {
                    "type": "numeric",
                    "count": 2,
                    "mean": None,
                    "median": None,
                    "q1": None,
                    "q3": None,
                    "min": None,
                    "max": None,
                    "population_mean": 51000.0,
                    "population_median": 48000.0,
                    "withheld": True,
                },
                "job": {"type": "categorical", "count": 5, "values": []},
            },
        ),
        Segment(
            segment_id="seg-0002",
            label=1,
            size=100,
            share=0.3125,
            keywords=[SCRIPT, "python"],
            exemplar_user_ids=['<b>"eve"</b>', "u-7"],
            persistence=0.62,
            cohesion=0.88,
            status="split",
            parents=["seg-0009"],
            attribute_profile={"age": dict(age, median=29.0, q1=24.0, q3=31.0)},
        ),
        Segment(
            segment_id="seg-0003",
            label=2,
            size=80,
            share=0.25,
            keywords=[],
            persistence=0.4,
            cohesion=0.85,
            status="new",
            attribute_profile={"withheld": True, "reason": "segment smaller than min_group_size"},
        ),
    ]
    return _model(
        [120, 100, 80],
        20,
        segments,
        stats={"n_users": 320, "n_outliers": 20, "timings": {"cluster_s": 1.23456}},
        lineage=[{"segment_id": "seg-0009", "status": "gone", "children": ["seg-0002"]}],
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "nested" / "dir"  # created by write_report
    return write_report(_three_segment_model(), out, seed=0)


def test_writes_index_map_and_one_card_per_segment(report: Path) -> None:
    out = report.parent
    assert report == out / "index.html" and report.is_file()
    for name in ("map.png", "segment-seg-0001.png", "segment-seg-0002.png", "segment-seg-0003.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_page_is_self_contained_utf8_and_sorted_by_size(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "v-test" in page
    positions = [page.index(f'id="seg-000{i}"') for i in (1, 2, 3)]
    assert positions == sorted(positions)  # 120 > 100 > 80 users
    assert CHINESE in page and "用户-2" in page
    assert "37.5%" in page and "31.2%" in page  # shares as percentages
    assert "cluster_s" in page and "1.235" in page  # nested stats, floats shortened
    assert 'src="map.png"' in page and 'src="segment-seg-0002.png"' in page
    assert "http://" not in page and "https://" not in page  # no external assets
    assert "seg-0009" in page  # lineage: parent of the split, and the gone segment


def test_data_strings_are_escaped(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page  # the page carries no script at all
    assert "&lt;b&gt;&quot;eve&quot;&lt;/b&gt;" in page and "<b>" not in page


def test_logs_stages_but_no_user_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="audience")
    model = _model(
        [30],
        5,
        [
            Segment(
                segment_id="seg-0001",
                label=0,
                size=30,
                share=0.86,
                keywords=[SCRIPT, CHINESE],
                exemplar_user_ids=["secret-user"],
            )
        ],
    )
    write_report(model, tmp_path)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("audience")]
    assert any(m.startswith("Report - Start") for m in messages)
    assert any(m.startswith("Report - Completed") for m in messages)
    printed = capsys.readouterr()
    for text in (SCRIPT, CHINESE, "secret-user"):
        assert all(text not in m for m in messages)
        assert text not in printed.out and text not in printed.err


def test_single_segment_under_fifty_points_uses_pca(tmp_path: Path) -> None:
    model = _model(
        [30],
        5,
        [
            Segment(
                segment_id="seg-0001",
                label=0,
                size=30,
                share=0.86,
                keywords=["only"],
                attribute_profile={},
            )
        ],
    )
    index = write_report(model, tmp_path / "a", seed=3)
    assert "seg-0001" in index.read_text(encoding="utf-8")
    first = (tmp_path / "a" / "map.png").read_bytes()
    assert first[:8] == PNG and (tmp_path / "a" / "segment-seg-0001.png").read_bytes()[:8] == PNG
    # The same seed gives the same picture.
    write_report(model, tmp_path / "b", seed=3)
    assert (tmp_path / "b" / "map.png").read_bytes() == first


def test_map_sample_is_capped_and_odd_ids_get_safe_file_names(tmp_path: Path) -> None:
    model = _model(
        [40, 20],
        0,
        [
            Segment(segment_id="a/b", label=0, size=40, share=0.67),
            Segment(segment_id="A_b", label=1, size=20, share=0.33),
        ],
    )
    index = write_report(model, tmp_path, max_map_points=10)
    assert (tmp_path / "segment-a_b.png").read_bytes()[:8] == PNG
    assert (tmp_path / "segment-A_b-2.png").read_bytes()[:8] == PNG
    assert 'src="segment-a_b.png"' in index.read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        write_report(model, tmp_path, max_map_points=0)


def test_no_segments_and_no_users(tmp_path: Path) -> None:
    model = _model([], 0, [])
    index = write_report(model, tmp_path)
    assert "No segments." in index.read_text(encoding="utf-8")
    assert (tmp_path / "map.png").read_bytes()[:8] == PNG


def test_page_for_marketers_summary_tree_and_folded_internals(tmp_path: Path) -> None:
    """Summary table first (names, shares, keywords, what sets each segment apart by lift),
    then the tree; an attribute that moves nowhere (a star sign) is left out; the build's
    internals are folded away at the end."""
    from audience.server._report_page import attribute_spread

    def sign(lift: float) -> dict:
        v = {"value": "leo", "share": 0.5, "population_share": 0.5, "lift": lift}
        return {"type": "categorical", "count": 50, "values": [v]}

    def gender(lift: float) -> dict:
        v = {"value": "female", "share": 0.5 * lift, "population_share": 0.5, "lift": lift}
        return {"type": "categorical", "count": 50, "values": [v]}

    def seg(i: int, name: str, g: float, s: float, parent: str) -> Segment:
        return Segment(
            segment_id=f"seg-000{i + 1}",
            label=i,
            size=100 - 10 * i,
            share=(100 - 10 * i) / 290,
            keywords=name.split(" / "),
            name=name,
            cohesion=0.6 - 0.2 * i,
            parent_id=parent,
            attribute_profile={"sign": sign(s), "gender": gender(g)},
        )

    segments = [
        seg(0, "bread / oven / dough", 1.6, 1.04, "grp-0001"),
        seg(1, "steak / grill / smoke", 0.8, 0.97, "grp-0001"),
        seg(2, "python / pip / numpy", 0.6, 1.02, ""),
    ]
    food = Segment(
        segment_id="grp-0001",
        label=3,
        size=190,
        share=190 / 290,
        keywords=["bread", "steak"],
        name="bread / steak",
        kind="group",
        children=["seg-0001", "seg-0002"],
        leaf_labels=[0, 1],
    )
    model = _model([100, 90, 80], 20, segments, stats={"next_number": 4, "reduce_umap_s": 1.5})
    model.groups = [food]
    spread = attribute_spread(segments)
    assert list(spread) == ["gender"]  # sign never moves by more than 10%
    page = write_report(model, tmp_path / "r").read_text(encoding="utf-8")
    order = [page.index(h) for h in ("<h2>Summary", "<h2>Segment tree", "<h2>Map", "<details>")]
    assert order == sorted(order)
    summary = page[page.index("<h2>Summary") : page.index("<h2>Segment tree")]
    assert "bread / oven / dough" in summary and "gender female x1.6" in summary
    assert "sign" not in summary and "tight" in summary and "loose" in summary
    tree = page[page.index("<h2>Segment tree") : page.index("<h2>Map")]
    assert tree.index("bread / steak") < tree.index("bread / oven / dough")  # group above
    assert "next_number" in page[page.index("<details>") :]  # internals folded at the end
    assert "next_number" not in page[: page.index("<details>")]
