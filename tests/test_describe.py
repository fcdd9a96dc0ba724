"""Segment descriptions: c-TF-IDF keywords (English and Chinese) and attribute profiles.

Pure functions, no server: crafted segments whose keywords and statistics are known by hand,
the sparse c-TF-IDF against the formula written densely, and a timing on 20,000 users.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from audience.index._segments._describe import (
    SegmentDescription,
    attribute_profile,
    describe_segments,
)
from audience.index._segments._keywords import (
    _candidates,
    segment_keywords,
    segment_name,
    stop_terms,
    tokenize,
)

MODULE = Path(__file__).resolve().parent.parent / "index/audience/index/_segments/_keywords.py"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")

COOKING = [
    "How do I bake sourdough bread at home? The dough is too sticky",
    "What is the best way to roast a chicken with garlic and lemon",
    "Sourdough starter smells sour, is the bread dough still ok to bake",
    "Why does my pasta dough tear when I roll it? Using flour and eggs",
    "Roast vegetables with garlic, olive oil and rosemary in the oven",
    "How to bake bread in a cast iron oven without burning the crust",
]
PROGRAMMING = [
    "How do I fix a segfault in my C++ code? The pointer is null",
    "What is the best way to debug a Python exception in production",
    "Using C# async code: why does my compiler show a warning",
    "How to refactor legacy Python code with unit tests and a debugger",
    "C++ compiler error about a pointer to a template class",
    "Why does the Python debugger skip my breakpoint in this code",
]
STOCKS = [
    "股市今天大涨，投资者信心增强",
    "股市下跌，基金经理开始减仓",
    "分析股市走势和股票价格的变化",
    "央行降息利好股市，股票投资者买入",
    "我们应该如何看待股市的波动和基金收益",
]
FOOTBALL = [
    "他每天都看足球新闻，关注足球转会",
    "足球是世界上最受欢迎的运动，球迷非常多",
    "昨天的足球比赛很精彩，球员表现出色",
    "这个赛季谁是足球冠军，球迷都在讨论",
    "我们学校的足球教练很厉害，球队赢了",
    "周末和朋友一起踢了一场球，足球让人快乐",
]


def _corpus(*segments: list[str]) -> tuple[np.ndarray, list[str]]:
    labels = np.concatenate([np.full(len(docs), i) for i, docs in enumerate(segments)])
    return labels, [d for docs in segments for d in docs]


# --------------------------------------------------------------------------------------------
# Tokens


def test_tokenize_keeps_words_and_drops_stopwords_and_numbers() -> None:
    toks = tokenize("How do I use C++ and C# with ASP.NET? Version 3.14 in 2024, don't!")
    # scikit-learn's list has no "use": a word every segment uses is left out by its lift
    assert toks == ["use", "c++", "c#", "asp.net", "version"]


def test_tokenize_chinese_gives_words_not_characters() -> None:
    toks = tokenize("我们今天讨论股市的走势，学习python编程")
    assert toks == ["讨论", "股市", "走势", "学习", "python", "编程"]


def test_importing_and_english_tokens_do_not_load_jieba() -> None:
    # Loaded from its file, so the package's heavier imports do not blur the check.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(MODULE)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['d'] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert 'jieba' not in sys.modules\n"
        "assert m.tokenize('plain english words') == ['plain', 'english', 'words']\n"
        "assert 'jieba' not in sys.modules\n"
        "assert m.tokenize('足球比赛') and 'jieba' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # jieba's "Building prefix dict ..." chatter is silenced


# --------------------------------------------------------------------------------------------
# Keywords


def test_english_segments_get_their_own_keywords() -> None:
    labels, docs = _corpus(COOKING, PROGRAMMING)
    kw = segment_keywords(labels, docs, top_n=5)
    assert set(kw) == {0, 1}
    assert set(kw[0]) == {"bake", "bread", "dough", "garlic", "oven"}
    assert set(kw[1]) == {"code", "python", "c++", "compiler", "debugger"}
    assert set(kw[0][:3]) <= {"bread", "dough", "bake", "sourdough", "garlic", "roast", "oven"}
    assert set(kw[1][:3]) <= {"code", "python", "c++", "pointer", "compiler", "debugger"}
    assert "c++" in kw[1] and "python" in kw[1]
    stop = {"how", "what", "why", "the", "is", "my", "do", "best", "way", "using", "use"}
    assert not stop & (set(kw[0]) | set(kw[1]))


def test_chinese_segments_get_multi_character_words() -> None:
    labels, docs = _corpus(STOCKS, FOOTBALL)
    kw = segment_keywords(labels, docs, top_n=8)
    for seg in (0, 1):
        assert kw[seg]
        assert all(len(w) >= 2 and CJK.search(w) for w in kw[seg]), kw[seg]
        assert not {"我们", "他们", "这个", "如何", "应该"} & set(kw[seg])
    assert kw[0][0] == "股市"
    assert kw[1][0] == "足球"
    assert "股市" not in kw[1] and "足球" not in kw[0]


def test_mixed_language_segments() -> None:
    labels, docs = _corpus(COOKING + STOCKS, PROGRAMMING + FOOTBALL)
    kw = segment_keywords(labels, docs, top_n=20)
    assert "股市" in kw[0] and "bread" in kw[0]
    assert "足球" in kw[1] and "python" in kw[1]


def test_outliers_get_no_keywords_and_no_description() -> None:
    labels, docs = _corpus(COOKING, PROGRAMMING)
    labels = labels.copy()
    labels[:2] = -1
    kw = segment_keywords(labels, docs)
    assert set(kw) == {0, 1}
    attrs = [{"age": 30}] * len(docs)
    desc = describe_segments(labels, docs, attrs)
    assert set(desc) == {0, 1}
    assert desc[0].size == len(COOKING) - 2
    assert desc[0].share == pytest.approx((len(COOKING) - 2) / len(docs))


def test_segment_without_tokens_gets_empty_keywords() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    docs = ["bread dough oven", "bread bake", "the and of 123", "", None]
    kw = segment_keywords(labels, docs)  # type: ignore[arg-type]
    assert kw[1] == [] and kw[2] == []
    assert kw[0][0] == "bread"
    assert segment_keywords(np.array([0, 1]), ["", "!!"]) == {0: [], 1: []}
    assert segment_keywords(np.array([], dtype=int), []) == {}
    assert segment_keywords(np.array([-1, -1]), ["bread", "oven"]) == {}


def test_ctfidf_matches_the_dense_formula() -> None:
    """The scores agree with BERTopic's c-TF-IDF written out densely, for the terms that are
    over-represented in their class (lift >= 1 + (1 - share) / 2)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(7)
    dense = rng.poisson(0.7, size=(6, 40)).astype(float)
    dense[:, dense.sum(axis=0) == 0] = 1.0  # every term occurs somewhere, as in a real vocab
    dense[3] = 0.0  # and one class has no terms at all
    row_sums = dense.sum(axis=1, keepdims=True)
    tf = np.divide(dense, row_sums, out=np.zeros_like(dense), where=row_sums > 0)
    idf = np.log(1.0 + (dense.sum() / dense.shape[0]) / dense.sum(axis=0))
    lift = tf / (dense.sum(axis=0) / dense.sum())
    terms = [f"t{j:02d}" for j in range(40)]
    for row in range(6):
        got = dict(_candidates(sp.csr_matrix(dense), [row], 40, terms))
        share = row_sums[row, 0] / dense.sum()
        want = {
            terms[j]: tf[row, j] * idf[j]
            for j in range(40)
            if dense[row, j] > 0 and lift[row, j] >= 1 + (1 - share) / 2
        }
        assert set(got) == set(want)
        for t, v in want.items():
            assert got[t] == pytest.approx(v, rel=1e-12)


def test_words_every_segment_uses_never_lead() -> None:
    """Markup and URLs (and a corpus's link placeholder, "urlLink") are never tokens; the
    corpus's own stop terms (here "said", in every segment alike) never lead."""
    topics = ["bread dough oven bake", "python code compiler debug", "football goal match"]
    docs, labels = [], []
    for i, words in enumerate(topics):
        for j in range(12):
            docs.append(f"urlLink said &nbsp; {words} http://x.example/{j} <b>said</b> {j}")
            labels.append(i)
    kw = segment_keywords(np.array(labels), docs, top_n=5)
    for i, words in enumerate(topics):
        assert set(kw[i]) == set(words.split()), kw[i]
    assert "said" in stop_terms(np.array(labels), docs)
    assert not {"nbsp", "http", "example", "b", "urllink"} & set(tokenize(docs[0]))
    assert tokenize("bread urlLink and nbsp http www") == ["bread"]


def test_keywords_are_diversified_and_named() -> None:
    """MMR: a term inside another ("file" in "files") is not taken twice over a new word."""
    docs = ["file files filename config"] * 5 + ["football goal"] * 5
    labels = np.array([0] * 5 + [1] * 5)
    kw = segment_keywords(labels, docs, top_n=2)
    assert kw[0][0] == "config" or "config" in kw[0]
    assert segment_name(["bash", "script", "command", "shell"]) == "bash / script / command"
    groups = segment_keywords(labels, docs, top_n=3, groups={"all": [0, 1]})
    assert set(groups["all"]) <= {"file", "files", "filename", "config", "football", "goal"}


def test_sampling_caps_documents_per_segment_deterministically() -> None:
    labels = np.zeros(40, dtype=int)
    docs = [f"common word{i}" for i in range(40)]
    a = segment_keywords(labels, docs, top_n=50, max_docs_per_segment=5, seed=3)
    b = segment_keywords(labels, docs, top_n=50, max_docs_per_segment=5, seed=3)
    assert a == b
    assert len(a[0]) == 6 and a[0][0] == "common"  # "common" + five sampled word<i>
    c = segment_keywords(labels, docs, top_n=50, max_docs_per_segment=5, seed=4)
    assert set(c[0]) != set(a[0])


def test_keywords_are_deterministic_and_ties_break_by_term() -> None:
    labels, docs = _corpus(COOKING + STOCKS, PROGRAMMING + FOOTBALL)
    assert segment_keywords(labels, docs) == segment_keywords(labels, list(docs))
    kw = segment_keywords(np.array([0]), ["zebra apple mango"])
    assert kw == {0: ["apple", "mango", "zebra"]}


def test_bad_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="labels"):
        segment_keywords(np.array([0, 1]), ["only one doc"])
    with pytest.raises(ValueError, match="labels"):
        segment_keywords(np.array([0, -2]), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        attribute_profile(np.array([0.5]), [{}])
    with pytest.raises(ValueError, match="max_values"):
        attribute_profile(np.array([0]), [{}], max_values=0)


# --------------------------------------------------------------------------------------------
# Attribute profile

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, -1])
ATTRS = [
    {"age": 20, "gender": "f", "subscriber": True},
    {"age": 30, "gender": "f", "subscriber": True},
    {"age": 40.0, "gender": "f", "subscriber": False},
    {"age": 50, "gender": "m"},
    {"age": 25, "gender": "m", "subscriber": True},
    {"age": 35, "gender": "m", "subscriber": False},
    {"age": 45, "gender": "f", "subscriber": False},
    {"age": 60, "gender": "m", "subscriber": True},
]


def test_numeric_profile_by_hand() -> None:
    prof = attribute_profile(LABELS, ATTRS)
    assert set(prof) == {0, 1}
    # Segment 0: ages 20 30 40 50. Quartiles interpolate linearly: q1 at position 0.75
    # (20 + 0.75 * 10), q3 at 2.25 (40 + 0.25 * 10). Population (outlier included): 20 25 30
    # 35 40 45 50 60, mean 305 / 8, median (35 + 40) / 2.
    assert prof[0]["age"] == {
        "type": "numeric",
        "count": 4,
        "mean": 35.0,
        "median": 35.0,
        "q1": 27.5,
        "q3": 42.5,
        "min": 20.0,
        "max": 50.0,
        "population_mean": 38.125,
        "population_median": 37.5,
    }
    # Segment 1: 25 35 45 -> q1 30, q3 40.
    assert prof[1]["age"]["median"] == 35.0
    assert (prof[1]["age"]["q1"], prof[1]["age"]["q3"]) == (30.0, 40.0)


def test_categorical_shares_and_lift_by_hand() -> None:
    prof = attribute_profile(LABELS, ATTRS)
    # Population: 4 f, 4 m. Segment 0: 3 f, 1 m. Segment 1: 2 m, 1 f.
    assert prof[0]["gender"] == {
        "type": "categorical",
        "count": 4,
        "values": [
            {"value": "f", "share": 0.75, "population_share": 0.5, "lift": 1.5},
            {"value": "m", "share": 0.25, "population_share": 0.5, "lift": 0.5},
        ],
    }
    assert prof[1]["gender"]["values"] == [
        {"value": "m", "share": 0.6667, "population_share": 0.5, "lift": 1.3333},
        {"value": "f", "share": 0.3333, "population_share": 0.5, "lift": 0.6667},
    ]


def test_bool_attributes_are_categorical_true_false() -> None:
    prof = attribute_profile(LABELS, ATTRS)
    # Segment 0: three members have the flag (2 true, 1 false); population: 4 true of 7.
    assert prof[0]["subscriber"] == {
        "type": "categorical",
        "count": 3,
        "values": [
            {"value": "true", "share": 0.6667, "population_share": 0.5714, "lift": 1.1667},
            {"value": "false", "share": 0.3333, "population_share": 0.4286, "lift": 0.7778},
        ],
    }


def test_mixed_types_follow_the_ninety_percent_rule() -> None:
    labels = np.zeros(20, dtype=int)
    mostly_numbers = [{"x": i} for i in range(19)] + [{"x": "unknown"}]
    prof = attribute_profile(labels, mostly_numbers)[0]["x"]
    assert prof["type"] == "numeric" and prof["count"] == 19 and prof["max"] == 18.0

    half = [{"x": 1}] * 10 + [{"x": "one"}] * 8 + [{"x": 1.0}] * 2
    prof = attribute_profile(labels, half)[0]["x"]
    assert prof["type"] == "categorical" and prof["count"] == 20
    assert [v["value"] for v in prof["values"]] == ["1", "one"]
    assert prof["values"][0]["share"] == 0.6


def test_missing_values_and_empty_attributes() -> None:
    labels = np.array([0, 0, 1])
    attrs = [{"x": 1.0, "y": None}, {"x": float("nan")}, {}]
    prof = attribute_profile(labels, attrs)
    assert prof[0]["x"]["count"] == 1 and prof[0]["x"]["mean"] == 1.0
    assert prof[1]["x"]["count"] == 0 and prof[1]["x"]["mean"] is None
    assert "y" not in prof[0]  # never present anywhere


def test_max_values_keeps_the_most_common() -> None:
    labels = np.zeros(10, dtype=int)
    attrs = [{"c": v} for v in "aaaabbbcdd"]
    values = attribute_profile(labels, attrs, max_values=2)[0]["c"]["values"]
    assert [v["value"] for v in values] == ["a", "b"]


def test_k_anonymity_withholds_small_segments_and_rare_values() -> None:
    labels = np.array([0] * 6 + [1] * 2)
    attrs = [
        {"city": "paris", "age": 30},
        {"city": "paris", "age": 31},
        {"city": "paris", "age": 32},
        {"city": "lyon"},
        {"city": "nice"},
        {"city": "brest"},
        {"city": "paris", "age": 40},
        {"city": "paris", "age": 41},
    ]
    prof = attribute_profile(labels, attrs, min_group_size=3)
    assert prof[1] == {"withheld": True, "reason": "segment smaller than min_group_size"}
    # lyon, nice, brest: one member each, pooled into (other) since the pool reaches 3.
    assert prof[0]["city"]["values"] == [
        {"value": "paris", "share": 0.5, "population_share": 0.625, "lift": 0.8},
        {"value": "(other)", "share": 0.5, "population_share": 0.375, "lift": 1.3333},
    ]
    assert prof[0]["age"]["count"] == 3 and prof[0]["age"]["median"] == 31.0

    prof = attribute_profile(labels, attrs, min_group_size=4)
    # No value reaches 4 members (3 paris, 1 each of the rest): all pooled, and the pool of 6
    # is large enough to show.
    assert prof[0]["city"]["values"] == [
        {"value": "(other)", "share": 1.0, "population_share": 1.0, "lift": 1.0}
    ]
    labels3 = np.array([0] * 3 + [1] * 5)
    prof3 = attribute_profile(labels3, attrs, min_group_size=3)
    # Segment 0 is paris x3 (kept); segment 1 has lyon, nice, brest (1 each) and paris x2:
    # paris pooled with them, pool of 5 shown; nothing in it is named.
    assert [v["value"] for v in prof3[0]["city"]["values"]] == ["paris"]
    assert prof3[1]["city"]["values"] == [
        {"value": "(other)", "share": 1.0, "population_share": 1.0, "lift": 1.0}
    ]
    attrs_small_pool = [{"city": "paris"}] * 5 + [{"city": "lyon"}, {"city": "nice"}]
    prof_pool = attribute_profile(np.zeros(7, dtype=int), attrs_small_pool, min_group_size=3)
    # lyon + nice = 2 < 3: left out altogether, the shares no longer sum to 1.
    assert prof_pool[0]["city"]["values"] == [
        {"value": "paris", "share": 0.7143, "population_share": 0.7143, "lift": 1.0}
    ]
    # Three ages are fewer than four people: their numbers are withheld too.
    assert prof[0]["age"]["withheld"] is True and prof[0]["age"]["min"] is None

    docs = ["bread oven" if lab == 0 else "goal match" for lab in labels]
    desc = describe_segments(labels, docs, attrs, min_group_size=3)
    assert desc[1].keywords == [] and desc[1].attribute_profile["withheld"] is True
    assert desc[0].keywords == ["bread", "oven"] and desc[0].name == "bread / oven"


def test_describe_is_json_and_deterministic() -> None:
    labels, docs = _corpus(COOKING + STOCKS, PROGRAMMING + FOOTBALL)
    labels = np.append(labels, -1)
    docs = [*docs, "an outlier about gardening"]
    rng = np.random.default_rng(0)
    attrs = [
        {
            "age": np.int64(rng.integers(18, 80)),
            "score": np.float32(rng.random()),
            "region": str(rng.choice(["north", "south"])),
            "vip": bool(rng.random() < 0.3),
        }
        for _ in docs
    ]
    a = describe_segments(labels, docs, attrs, top_n=5)
    b = describe_segments(labels, docs, attrs, top_n=5)
    assert a == b
    assert all(isinstance(d, SegmentDescription) for d in a.values())
    text = json.dumps({k: asdict(v) for k, v in a.items()}, allow_nan=False)
    assert json.loads(text)["0"]["size"] == len(COOKING) + len(STOCKS)
    assert a[0].share == (len(COOKING) + len(STOCKS)) / len(docs)
    assert len(a[0].keywords) == 5
    assert a[0].attribute_profile["age"]["type"] == "numeric"
    assert a[0].attribute_profile["vip"]["type"] == "categorical"


# --------------------------------------------------------------------------------------------
# Size


def test_twenty_thousand_users_in_twenty_segments() -> None:
    rng = np.random.default_rng(1)
    n, k = 20_000, 20
    shared = [f"common{i}" for i in range(200)] + ["the", "how", "to", "what", "is"]
    topics = [[f"topic{s}word{i}" for i in range(30)] for s in range(k)]
    labels = rng.integers(-1, k, size=n)
    docs = []
    for lab in labels:
        words = list(rng.choice(shared, size=6))
        if lab >= 0:
            words += list(rng.choice(topics[lab], size=4))
        docs.append(" ".join(words))
    attrs = [
        {"age": int(a), "region": f"r{r}", "vip": bool(v)}
        for a, r, v in zip(rng.integers(18, 80, n), rng.integers(0, 30, n), rng.random(n) < 0.2)
    ]
    started = time.perf_counter()
    desc = describe_segments(labels, docs, attrs, top_n=10, min_group_size=10)
    elapsed = time.perf_counter() - started
    print(f"describe_segments: {n} users, {k} segments in {elapsed:.2f} s")
    assert elapsed < 60.0  # a generous bound; the figure itself is printed above
    assert set(desc) == set(range(k))
    for seg, d in desc.items():
        assert len(d.keywords) == 10
        assert all(w.startswith(f"topic{seg}word") for w in d.keywords), d.keywords
