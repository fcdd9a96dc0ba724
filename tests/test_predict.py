"""Predicted attributes through the real server, client and CLI: models fitted on the users
who have an attribute, answers beside (never instead of) stored values, filters on predicted
values with a confidence floor, a damaged model file refitted, zero-shot tags."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from test_segments import POOLS

from audience.client import AudienceClient, InvalidArgument, Profile
from audience.index._predict import (
    AttributeModel,
    Inputs,
    NotPredictable,
    PredictorDamaged,
    fit_attribute,
    text_features,
)
from audience.index._predict._fit import _logistic
from audience.server._cli import main

PLAN = {"cook": "home", "code": "pro", "ball": "sport"}


def people(n_per_topic: int = 30, seed: int = 0) -> list[Profile]:
    """Users of three interests; two in three say their plan (which follows the interest),
    every user says an age that does not."""
    rng = random.Random(seed)
    out = []
    for topic, words in POOLS.items():
        for i in range(n_per_topic):
            texts = [" ".join(rng.choices(words, k=8)) for _ in range(2)]
            attrs: dict = {"age": float(rng.randint(18, 70))}
            if i % 3:
                attrs["plan"] = PLAN[topic]
            out.append(Profile(f"{topic}-{i}", texts=texts, attributes=attrs))
    return out


@pytest.fixture
def fitted(start_server):
    server = start_server(attributes=(), segment_min_group_size=0)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        client.upsert_users(people())
        result = client.fit_predictors()
        yield server, client, result


def test_a_model_is_fitted_per_attribute_and_measured_on_users_it_did_not_see(fitted) -> None:
    _, client, result = fitted
    by_name = {p.attribute: p for p in result.predictors}
    plan = by_name["plan"]
    assert plan.kind == "categorical" and plan.classes == ("home", "pro", "sport")
    assert plan.users == 60 and plan.version == 1
    assert plan.accuracy >= 0.9 and plan.macro_f1 >= 0.9
    assert plan.majority_accuracy == pytest.approx(1 / 3, abs=0.01)
    assert 0.0 <= plan.calibration_error < 0.2
    assert set(plan.candidates) >= {"knn", "linear C=1"}
    # an age unrelated to the texts is not worth a model, and the fit says why
    assert "age" not in by_name
    assert any(s.startswith("age: held-out mean absolute error") for s in result.skipped)
    assert [p.attribute for p in client.list_predictors()] == ["plan"]


def test_predictions_sit_beside_stored_values_and_never_replace_them(fitted) -> None:
    _, client, _ = fitted
    unsaid = [f"{t}-{i}" for t in PLAN for i in range(0, 30, 3)]  # no stored plan
    said = ["cook-1", "code-2", "ball-4"]
    found = client.predict_attributes(unsaid + said)
    assert [u.user_id for u in found] == unsaid + said
    right = [u.value("plan").value == PLAN[u.user_id.split("-")[0]] for u in found]
    assert np.mean(right) >= 0.9
    for u in found:
        v = u.value("plan")
        assert 0.0 <= v.confidence <= 1.0 and v.alternatives[0][0] == v.value
        assert sum(p for _, p in v.alternatives) == pytest.approx(1.0, abs=0.01)
        assert v.stored == (PLAN[u.user_id.split("-")[0]] if u.user_id in said else None)
    # the store is unchanged: no predicted value written into a profile
    assert "plan" not in client.get_user("cook-0").profile.attributes
    assert client.get_user("cook-1").profile.attributes["plan"] == "home"
    # a profile not stored is predicted too, and stays unstored
    (new,) = client.predict_attributes(
        profiles=[Profile("visitor", texts=[" ".join(POOLS["code"][:8])])], attributes=["plan"]
    )
    assert new.value("plan").value == "pro"
    with pytest.raises(Exception, match="visitor"):
        client.get_user("visitor")


def test_filters_read_predicted_values_with_a_confidence_floor(fitted) -> None:
    _, client, _ = fitted
    assert client.estimate_reach(["plan=home"]).reach == 20  # stored only
    both = client.estimate_reach(["plan=home@0.5"]).reach
    assert 28 <= both <= 32  # stored, or predicted for the 10 cooks who did not say
    only = client.estimate_reach(["predicted.plan=home"]).reach
    assert 28 <= only <= 32  # every user has a prediction, stored value or not
    assert client.estimate_reach(["predicted.plan=home@1.0"]).reach <= only
    audience = client.find_lookalikes(seed_ids=["cook-1"], k=50, filters=["plan=home@0.5"])
    assert {u.user_id.split("-")[0] for u in audience.users} == {"cook"}
    # a user written after the fit is predicted at once
    client.upsert_users([Profile("cook-new", texts=[" ".join(POOLS["cook"][:8])])])
    assert client.estimate_reach(["predicted.plan=home"]).reach == only + 1
    for bad, match in [
        ("predicted.region=EU", "no model predicts 'region'"),
        ("plan=1..3@0.5", "category, not a number"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            client.estimate_reach([bad])
    with pytest.raises(InvalidArgument, match="confidence is in 0..1"):
        client.estimate_reach(["plan=home@1.5"])


def test_segment_profiles_show_the_predicted_share_beside_the_stored_one(fitted) -> None:
    _, client, _ = fitted
    client.build_segments(reducer="pca", min_cluster_size=20)
    segments = client.list_segments()
    assert len(segments) >= 2
    for seg in segments:
        stored = seg.attribute_profile["plan"]
        guessed = seg.attribute_profile["predicted.plan"]
        assert stored["count"] + guessed["count"] == seg.size  # each member counted once
        top = max(guessed["values"], key=lambda v: v["share"])["value"]
        assert top == max(stored["values"], key=lambda v: v["share"])["value"]


def test_zero_shot_tags_put_users_with_their_topic(fitted) -> None:
    _, client, _ = fitted
    ids = [f"{t}-{i}" for t in PLAN for i in range(5)]
    names = ["cooking recipes", "programming code", "football match"]
    found = client.predict_attributes(ids, tags=names, max_tags=2, min_tag_score=-10)
    top = {"cook": names[0], "code": names[1], "ball": names[2]}
    hits = [u.tags[0].tag == top[u.user_id.split("-")[0]] for u in found]
    assert np.mean(hits) >= 0.8, found
    assert all(len(u.tags) == 2 and u.tags[0].score >= u.tags[1].score for u in found)


@pytest.mark.parametrize("damaged", [".npz", ".answers.npz"])
def test_a_damaged_model_file_is_detected_and_refitted(
    start_server, tmp_path: Path, damaged: str
) -> None:
    data = tmp_path / "data"
    server = start_server(data_dir=data, attributes=())
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        client.upsert_users(people())
        client.rebuild_index()  # the lexical channel fitted now, not at the next start
        client.fit_predictors(["plan"])
    server.stop()
    files = sorted((data / "predictors").glob("plan-*.npz"))
    (npz,) = [p for p in files if p.name.endswith(".answers.npz") == (damaged == ".answers.npz")]
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))

    server = start_server(data_dir=data, attributes=())
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        warnings = client.stats().warnings
        assert any("predictor of attribute 'plan' is damaged" in w for w in warnings), warnings
        jobs = client.list_jobs(kind="fit-predictors")
        assert len(jobs) == 2  # the fit asked for, then the refit the restart started
        job = jobs[0]
        done = client.wait_job(job.job_id, timeout=120)
        assert done.state == "SUCCEEDED" and done.result.predictors[0].attribute == "plan"
        (plan,) = client.list_predictors()
        assert plan.version == 2 and plan.accuracy >= 0.9
        assert client.estimate_reach(["predicted.plan=home"]).reach >= 28


def test_a_restart_serves_saved_answers_and_answers_users_written_since(
    start_server, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(data_dir=data, attributes=())
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        client.upsert_users(people())
        client.rebuild_index()
        client.fit_predictors(["plan"])
        client.upsert_users([Profile("cook-late", texts=[" ".join(POOLS["cook"][:8])])])
        before = client.estimate_reach(["predicted.plan=home"]).reach
    server.stop()
    server = start_server(data_dir=data, attributes=())
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        assert len(client.list_jobs(kind="fit-predictors")) == 1  # nothing to refit
        assert client.estimate_reach(["predicted.plan=home"]).reach == before
        (late,) = client.predict_attributes(["cook-late"])
        assert late.value("plan").value == "home"


def test_the_cli_fits_lists_and_predicts(fitted, capsys) -> None:
    server, _, _ = fitted
    target = ["--target", f"127.0.0.1:{server.port}"]
    assert main(["predict", "fit", "plan", "--no-progress", *target]) == 0
    assert "fitted 1 model (plan)" in capsys.readouterr().out
    assert main(["predict", "list", *target]) == 0
    out = capsys.readouterr().out
    assert "plan" in out and "home, pro, sport" in out and "macro-F1" in out
    assert main(["predict", "users", "cook-0", "--text", "football goal", *target]) == 0
    out = capsys.readouterr().out
    assert "cook-0\n  plan: home" in out and "text-1\n  plan: sport" in out
    assert main(["predict", "users", "cook-1", "--json", *target]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["values"][0]["stored"] == "home"


# ---------------------------------------------------------------- the models themselves


def _blobs(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    y = rng.integers(0, 3, n)
    return (centres[y] + 0.8 * rng.normal(size=(n, dim))).astype(np.float32), y


def test_the_served_linear_model_answers_as_scikit_learn_does() -> None:
    x, y = _blobs(300)
    x = text_features(x, x.shape[1])
    labels = [f"c{v}" for v in y]
    model = fit_attribute("kind", x, labels, text_dims=x.shape[1], fingerprint="f")
    assert model.quality.calibration_error < 0.1  # confidences near how often it is right
    weights, bias = _logistic(x, y, 3, model.regularisation)
    reference = LogisticRegression(
        C=model.regularisation, max_iter=1000, class_weight="balanced"
    ).fit(x, y)
    model.temperature = 1.0
    answered = model.probabilities(Inputs(x))
    np.testing.assert_allclose(answered, reference.predict_proba(x), atol=1e-4)
    np.testing.assert_allclose(model.arrays["weights"], weights, atol=1e-6)


def test_a_model_survives_saving_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    x, y = _blobs(200, seed=1)
    labels = [f"c{v}" for v in y]
    model = fit_attribute("kind", x, labels, text_dims=x.shape[1], fingerprint="f")
    model.save(tmp_path, {"iids": np.arange(3), "codes": np.array([0, 2, 1])})
    (manifest,) = tmp_path.glob("*.json")
    again, answers = AttributeModel.load(manifest)
    assert again.classes == model.classes and again.quality == model.quality
    assert answers["codes"].tolist() == [0, 2, 1]
    np.testing.assert_array_equal(again.probabilities(Inputs(x)), model.probabilities(Inputs(x)))
    doc = json.loads(manifest.read_text())
    doc["temperature"] = 9.0
    manifest.write_text(json.dumps(doc))
    with pytest.raises(PredictorDamaged, match="checksum"):
        AttributeModel.load(manifest)


def test_numbers_are_predicted_and_unlearnable_attributes_refused() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    spend = 50 + 10 * x[:, 0] + rng.normal(size=200)
    model = fit_attribute("spend", x, list(spend), text_dims=8, fingerprint="f")
    assert model.kind == "numeric" and model.quality.mae < 0.5 * model.quality.baseline_mae
    assert np.mean(np.abs(model.numbers(Inputs(x)) - spend)) < 2.0
    inside = model.in_range_confidence(np.array([50.0]), 40.0, 60.0)
    assert 0.99 < inside[0] <= 1.0
    with pytest.raises(NotPredictable, match="at least 30"):
        fit_attribute("rare", x[:10], ["a"] * 10, text_dims=8, fingerprint="f")
    with pytest.raises(NotPredictable, match="fewer than 2 values"):
        fit_attribute("same", x, ["a"] * 200, text_dims=8, fingerprint="f")
    with pytest.raises(NotPredictable, match="distinct values"):
        fit_attribute("id", x, [f"u{i}" for i in range(200)], text_dims=8, fingerprint="f")
    assert time.time() - model.fitted_at < 60


def test_built_in_sentiment_is_stored_as_a_derived_attribute(start_server) -> None:
    server = start_server(attributes=("age:numeric:10:90",), sentiment=True)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        client.upsert_users(
            [
                Profile("happy", texts=["I love this phone, it is wonderful!", "Great day."]),
                Profile("angry", texts=["This is the worst service ever. Terrible and rude."]),
                Profile("hao", texts=["这个手机非常好用，质量很好，我很喜欢"]),
                Profile("cha", texts=["质量太差了，非常失望，再也不买了"]),
                Profile("own", texts=["Terrible."], attributes={"sentiment": 0.9}),
                Profile("quiet", attributes={"age": 30}),
            ]
        )
        score = {
            u: client.get_user(u).profile.attributes.get("sentiment")
            for u in ("happy", "angry", "hao", "cha", "own", "quiet")
        }
    assert score["happy"] > 0.5 and score["angry"] < -0.5, score
    assert score["hao"] > 0.3 and score["cha"] < -0.3, score  # snownlp, for Chinese
    assert score["own"] == 0.9  # a sentiment of its own is kept
    assert score["quiet"] is None  # no texts, no score
    with AudienceClient(f"127.0.0.1:{server.port}") as client:
        assert client.estimate_reach(["sentiment>=0.3"]).reach == 3


def test_attribute_names_of_predictions_are_not_stored(fitted) -> None:
    _, client, _ = fitted
    with pytest.raises(InvalidArgument, match="models' answers, not stored"):
        client.upsert_users([Profile("x", texts=["hello"], attributes={"predicted.plan": "pro"})])
