"""Prometheus metrics through the real server: scraped over HTTP after real calls."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_segments import population

from audience.client import AudienceClient, InvalidArgument, NotFound
from conftest import crafted_profiles

LOOKALIKE = {"grpc_service": "audience.v1.Lookalike", "grpc_method": "FindLookalikes"}


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_metrics_count_calls_latency_and_errors(start_server) -> None:
    server = start_server(metrics_port=0)
    assert server.metrics_port > 0
    with AudienceClient(f"127.0.0.1:{server.port}") as client:
        client.upsert_users(crafted_profiles() + population(4, prefix="p"))
        for _ in range(7):
            client.find_lookalikes(seed_ids=["cook-0"], k=3)
        with pytest.raises(InvalidArgument):
            client.find_lookalikes(seed_ids=["cook-0"], k=3, filters=["age=20-29"])
        with pytest.raises(NotFound):
            client.find_lookalikes(seed_ids=["nobody"], k=3)
        client.build_segments(reducer="pca", min_cluster_size=5)

    samples = scrape(server.metrics_port)
    count = value(samples, "audience_grpc_server_handling_seconds_count", **LOOKALIKE)
    assert count == 9  # every call is timed, failed ones too
    ok = value(samples, "audience_grpc_server_handled_total", grpc_code="OK", **LOOKALIKE)
    bad = value(
        samples, "audience_grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **LOOKALIKE
    )
    missing = value(
        samples, "audience_grpc_server_handled_total", grpc_code="NOT_FOUND", **LOOKALIKE
    )
    assert (ok, bad, missing) == (7, 1, 1)
    buckets = [
        s
        for s in samples["audience_grpc_server_handling_seconds_bucket"]
        if LOOKALIKE.items() <= s.labels.items()
    ]
    assert [s.value for s in buckets if s.labels["le"] == "+Inf"] == [9]
    assert value(samples, "audience_grpc_server_handling_seconds_sum", **LOOKALIKE) > 0
    assert value(samples, "audience_grpc_server_in_flight", **LOOKALIKE) == 0
    assert value(samples, "audience_users") == 30
    assert value(samples, "audience_indexed_vectors") == 30
    assert value(samples, "audience_index_info", kind="flat") == 1
    assert value(samples, "audience_encoder_texts_total") == 60
    assert value(samples, "audience_encoder_seconds_total") > 0
    assert value(samples, "audience_segment_model_age_seconds") >= 0
    assert value(samples, "audience_job_running", kind="build-segments") == 0
    assert value(samples, "audience_start_recoveries") == 0


def test_metrics_are_off_by_default(server) -> None:
    assert server.metrics_port == 0
