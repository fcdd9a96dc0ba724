"""The lexical channel: Chinese users through the real server, persistence, corruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audience.client import AudienceClient, Profile
from audience.index._encode._lexical import LexicalModel, LexicalModelError, analyze, cjk_share

HEADLINES = {
    "sport": [
        "国足世预赛主场迎战日本队 球迷期待胜利",
        "中超联赛第十轮 上海海港客场战胜北京国安",
        "篮球总决赛 广东队夺得总冠军",
        "女排世界杯中国队三比零击败美国队",
        "季后赛湖人队加时险胜勇士队 球迷沸腾",
        "羽毛球公开赛林丹晋级男单决赛",
        "马拉松比赛在北京举行 三万名选手参赛",
        "乒乓球世锦赛马龙卫冕男单冠军",
    ],
    "money": [
        "央行宣布降准 释放长期资金一万亿元",
        "沪指收涨百分之一 券商板块领涨股市",
        "人民币兑美元汇率创年内新高",
        "银行理财产品收益率持续下降",
        "房地产投资增速放缓 房价环比持平",
        "上市公司年报披露 净利润同比增长",
        "基金经理看好消费板块 股市行情回暖",
        "国债收益率下行 债券市场走强 银行资金充裕",
    ],
    "tech": [
        "苹果发布新款手机 搭载自研芯片",
        "人工智能大模型推动软件产业升级",
        "华为发布鸿蒙操作系统新版本 手机用户升级",
        "网络覆盖全国所有地级市 手机信号更好",
        "电动汽车电池技术取得重大突破 芯片国产化",
        "互联网公司加大云计算投入 人工智能",
        "量子计算机实现新的计算优势",
        "智能手机出货量第三季度回升 芯片供应改善",
    ],
}


def chinese_profiles() -> list[Profile]:
    out = []
    for topic, texts in HEADLINES.items():
        for i, text in enumerate(texts):
            out.append(
                Profile(
                    f"{topic}-{i}",
                    texts=[text, texts[(i + 3) % len(texts)]],
                    attributes={"region": "cn"},
                )
            )
    return out


def test_analyzer_and_cjk_share() -> None:
    assert analyze("C++ 与 Python 编程") == ["c++", "与", "python", "编", "程", "编程"]
    assert cjk_share(["股市行情", "stock market"]) == pytest.approx(4 / 15)


def test_chinese_round_trip(start_server) -> None:
    server = start_server()
    with AudienceClient(f"127.0.0.1:{server.port}") as c:
        c.upsert_users(chinese_profiles())
        assert c.stats().lexical_model == "none"  # too few users to fit on at start
        c.rebuild_index()
        stats = c.stats()
        assert stats.lexical_model != "none" and stats.lexical_documents == 24
        assert stats.lexical_weight == pytest.approx(0.9)  # a Chinese corpus
        result = c.find_lookalikes(seed_texts=["股市 基金 银行 收益率"], k=5)
        assert [u.user_id.split("-")[0] for u in result.users] == ["money"] * 5, result
        by_id = c.find_lookalikes(seed_ids=["tech-0", "tech-1"], k=4)
        assert {u.user_id.split("-")[0] for u in by_id.users} == {"tech"}
        # New users after the fit are encoded with the same model.
        c.upsert_users([Profile("late", texts=["球迷庆祝国足夺得冠军"])])
        near = c.find_lookalikes(seed_ids=["late"], k=3)
        assert {u.user_id.split("-")[0] for u in near.users} == {"sport"}


def test_lexical_model_survives_restart(start_server, tmp_path: Path) -> None:
    data = tmp_path / "lex-data"
    first = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{first.port}") as c:
        c.upsert_users(chinese_profiles())
        c.rebuild_index()
        version = c.stats().lexical_model
        before = {
            p.user_id: c.get_user(p.user_id, include_vector=True).vector for p in chinese_profiles()
        }
        query = [
            (u.user_id, u.score) for u in c.find_lookalikes(seed_texts=["手机芯片"], k=6).users
        ]
    first.stop()

    second = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{second.port}") as c:
        assert c.stats().lexical_model == version
        for uid, vec in before.items():
            assert c.get_user(uid, include_vector=True).vector == vec
        again = [
            (u.user_id, u.score) for u in c.find_lookalikes(seed_texts=["手机芯片"], k=6).users
        ]
        assert again == query
        # Upserting a user again gives the same vector (same model, same texts): identical
        # up to the int8 encoder's batch dependence (it quantizes activations per batch, and
        # the first upsert embedded tech-2 among other users).
        c.upsert_users([p for p in chinese_profiles() if p.user_id == "tech-2"])
        after = np.frombuffer(c.get_user("tech-2", include_vector=True).vector, "<f4")
        assert float(after @ np.frombuffer(before["tech-2"], "<f4")) > 0.995


def test_corrupted_lexical_model_is_detected(start_server, tmp_path: Path, caplog) -> None:
    data = tmp_path / "lex-data"
    first = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{first.port}") as c:
        c.upsert_users(chinese_profiles())
        c.rebuild_index()
    first.stop()

    path = data / "lexical" / "lexical.npz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(LexicalModelError, match="checksum"):
        LexicalModel.load(data / "lexical")
    path.write_bytes(bytes(blob[: len(blob) // 3]))  # truncated
    with pytest.raises(LexicalModelError):
        LexicalModel.load(data / "lexical")

    with caplog.at_level("ERROR", logger="audience.index"):
        second = start_server(data_dir=data, lexical_min_users=10)
    assert any("lexical model" in r.getMessage() for r in caplog.records)
    with AudienceClient(f"127.0.0.1:{second.port}") as c:
        assert c.stats().lexical_model != "none"  # refitted from the store
        vectors = {
            p.user_id: np.frombuffer(c.get_user(p.user_id, include_vector=True).vector, "<f4")
            for p in chinese_profiles()
        }
        hit = c.find_lookalikes(seed_ids=["money-1"], k=1, include_seeds=True).users[0]
        assert hit.user_id == "money-1" and hit.score == pytest.approx(1.0, abs=1e-4)
        assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors.values())
    assert LexicalModel.load(data / "lexical") is not None  # the refit was saved
