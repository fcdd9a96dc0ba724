"""Long jobs through the real server: started at once, watched, cancelled, one of a kind at
a time, and a restart during a job leaves a clear failed state."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_reliability import _seed_export, _serve, _wait_serving
from test_segments import population

from audience.client import AudienceClient, Cancelled, FailedPrecondition, NotFound, Profile
from audience.index import JobRunner
from audience.server._cli import main


@pytest.fixture
def populated(start_server):
    server = start_server(segment_min_group_size=0)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60) as client:
        client.upsert_users(population(60))
        yield server, client


def test_a_segment_build_job_reports_progress_and_its_result(populated) -> None:
    _, client = populated
    job = client.start_build_segments(min_cluster_size=20)
    assert job.state == "RUNNING" and not job.done and job.kind == "build-segments"
    seen = []
    done = client.wait_job(job.job_id, on_update=lambda j: seen.append(j), poll=0.02)
    assert done.state == "SUCCEEDED", done
    progress = {(j.stage, j.stage_done) for j in seen if not j.done and j.stage != "starting"}
    assert len(progress) >= 2, seen  # progress reported more than once before the end
    assert done.result.segments == len(client.list_segments()) >= 2
    assert done.result.users == 180 and done.result.model_version.startswith("v000001-")
    listed = client.list_jobs()
    assert listed[0].job_id == job.job_id and listed[0].state == "SUCCEEDED"
    with pytest.raises(NotFound, match="job-999999"):
        client.get_job("job-999999")


def test_cancel_stops_a_build_within_seconds_and_keeps_the_model(start_server) -> None:
    """A build long enough to cancel: UMAP over 3,000 users, cancelled during its layout
    (500 epochs that report progress every half second)."""
    server = start_server(lexical_dim=0)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        dim = client.stats().dimension
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((3, dim)).astype(np.float32)
        x = centres[np.arange(3000) % 3] + 0.3 * rng.standard_normal((3000, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        client.upsert_users(Profile(f"u{i}", vector=x[i].tobytes()) for i in range(3000))
        first = client.build_segments(min_cluster_size=100)  # blocking: the old behaviour
        members = {s.segment_id: s.size for s in client.list_segments()}

        job = client.start_build_segments(reducer="umap", min_cluster_size=100)
        with pytest.raises(FailedPrecondition, match=f"already running: {job.job_id}"):
            client.start_build_segments()  # one build at a time, naming the running one
        deadline = time.monotonic() + 60
        while client.get_job(job.job_id).stage != "reduce: umap epochs":  # the layout runs
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        asked = client.cancel_job(job.job_id)
        assert asked.cancel_requested and not asked.done
        ended = client.wait_job(job.job_id, poll=0.05, timeout=5)
        took = time.monotonic() - t0
        assert ended.state == "CANCELLED" and ended.error_code == "CANCELLED", ended
        assert took < 5.0, took
        assert {s.segment_id: s.size for s in client.list_segments()} == members
        assert first.segments == len(members)

        # the blocking call runs as a job too: it can be seen and cancelled from elsewhere
        outcome: list[BaseException | object] = []

        def blocking() -> None:
            try:
                outcome.append(client.build_segments(reducer="umap", min_cluster_size=100))
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        caller = threading.Thread(target=blocking)
        caller.start()
        deadline = time.monotonic() + 30
        while not (running := [j for j in client.list_jobs() if not j.done]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client.cancel_job(running[0].job_id)
        caller.join(30)
        assert isinstance(outcome[0], Cancelled), outcome
        assert {s.segment_id: s.size for s in client.list_segments()} == members
        # a layout stopped half-way leaves nothing behind (tqdm's lock): the next one runs
        assert client.build_segments(min_cluster_size=100).segments == first.segments


def test_cli_follows_detaches_and_cancels(populated, capsys) -> None:
    server, _ = populated
    target = f"127.0.0.1:{server.port}"
    assert main(["segments", "build", "--target", target, "--min-cluster-size", "20"]) == 0
    out = capsys.readouterr()
    assert "segments over 180 users" in out.out
    build = ["segments", "build", "--target", target, "--detach", "--min-cluster-size", "20"]
    assert main(build) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("job-")
    assert main(["jobs", "cancel", job_id, "--target", target, "--wait"]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["jobs", "list", "--target", target]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["job", "kind", "state"]
    assert any(job_id in line and "cancelled" in line for line in table)
    assert main(["jobs", "show", job_id, "--target", target]) == 0
    assert "state:" in capsys.readouterr().out
    assert main(["jobs", "show", job_id, "--target", target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"
    assert main(["rebuild-index", "--target", target, "--no-progress"]) == 0
    assert "rebuilt: 180 users" in capsys.readouterr().out


def test_a_cancel_after_the_last_checkpoint_lets_the_job_succeed(tmp_path: Path) -> None:
    """A cancel is taken at the next progress report; one asked after the last report comes
    too late: the job succeeds, and says a cancel was asked (`jobs cancel` reports it so)."""
    runner = JobRunner(tmp_path / "jobs")
    past_last, release = threading.Event(), threading.Event()

    def work(progress) -> None:
        progress("only stage", 1, 1)
        past_last.set()
        release.wait(30)

    job = runner.start("test", work)
    assert past_last.wait(30)
    asked = runner.cancel(job.job_id)
    assert asked.cancel_requested and not asked.finished
    release.set()
    end = runner.wait(job.job_id, timeout=30)
    assert end.state == "SUCCEEDED" and end.cancel_requested


@pytest.mark.timeout(300)
def test_a_restart_during_a_job_marks_it_failed(tmp_path: Path, embedder, start_server) -> None:
    data = tmp_path / "data"
    _seed_export(data, embedder)
    proc = _serve(data, tmp_path)
    try:
        target = _wait_serving(proc)
        with AudienceClient(target, timeout=60) as client:
            client.upsert_users(population(60))
            job = client.start_build_segments(min_cluster_size=20)
            deadline = time.monotonic() + 60
            while client.get_job(job.job_id).stage == "starting":
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}") as client:
        after = client.get_job(job.job_id)
        assert after.state == "FAILED" and after.done and after.error_code == "ABORTED"
        assert "interrupted: the server stopped" in after.error and "Start it again" in after.error
        with pytest.raises(FailedPrecondition):  # no segment model was served
            client.list_segments()
        assert client.build_segments(min_cluster_size=20).segments >= 2  # runs again
