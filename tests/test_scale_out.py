"""Scale-out with real parts: Ray (a local Ray in the CLI's process; a two-node
`ray.cluster_utils.Cluster` in this one) for batch ingest and segment placement, and a
primary and a read replica as two real server processes.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from test_reliability import _seed_export, _serve, _wait_serving

from audience.client import AudienceClient, FailedPrecondition, NotFound, Profile
from conftest import TOPICS

HOBBIES = {
    topic: texts
    + [
        f"{t.split(':')[0]} again, {extra}"
        for t in texts
        for extra in ("this week", "with friends", "on a rainy sunday")
    ]
    for topic, texts in TOPICS.items()
}


def _write_tsv(path: Path, users: int, texts_per_user: int, seed: int = 0) -> None:
    """Rows of `users` users spread over the file (shuffled), several texts each."""
    rng = random.Random(seed)
    rows = []
    topics = sorted(HOBBIES)
    for u in range(users):
        topic = topics[u % len(topics)]
        for j in range(texts_per_user):
            text = rng.choice(HOBBIES[topic])
            gender = "f" if u % 2 else "m"
            rows.append(f"u{u:04d}\t{text}\t{20 + u % 50}\t{gender}\t{1600000000 + j}")
    rng.shuffle(rows)
    path.write_text("id\ttext\tage\tgender\tts\n" + "\n".join(rows) + "\n")


INGEST_FLAGS = ["--id-col", "id", "--text-col", "text", "--attr", "age:number", "--attr", "gender",
                "--time-col", "ts"]  # fmt: skip


def _vectors(client: AudienceClient, ids: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for uid in ids:
        v = np.frombuffer(client.get_user(uid, include_vector=True).vector, "<f4")
        out[uid] = v / np.linalg.norm(v)
    return out


@pytest.mark.timeout(600)
def test_ray_ingest_stores_what_a_local_ingest_stores(tmp_path: Path, start_server, capsys) -> None:
    """`audience ingest --engine ray` on a local Ray (`ray.init(num_cpus=2)`) against a local
    ingest of the same file: same users, texts and attributes, vectors at cosine >= 0.99, the
    same lookalikes; the server embedded nothing itself."""
    from audience.server._cli import main

    data = tmp_path / "users.tsv"
    _write_tsv(data, users=120, texts_per_user=3)
    local = start_server(data_dir=tmp_path / "local")
    viaray = start_server(data_dir=tmp_path / "ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for server, extra in ((local, []), (viaray, ["--engine", "ray", "--workers", "2"])):
            code = main(["ingest", str(data), *INGEST_FLAGS, "--target",
                         f"127.0.0.1:{server.port}", "--no-progress", *extra])  # fmt: skip
            err = capsys.readouterr().err
            assert code == 0, err[-3000:]
            assert "read 360 rows -> 120 users, 360 texts" in err, err[-2000:]
    finally:
        ray.shutdown()
    assert "Ray: 1 node(s), 2 CPUs" in err
    assert viaray.engine.encoder.counter.texts == 0  # no model work on the server
    assert local.engine.encoder.counter.texts == 360
    ids = [f"u{u:04d}" for u in range(120)]
    with (
        AudienceClient(f"127.0.0.1:{local.port}") as a,
        AudienceClient(f"127.0.0.1:{viaray.port}") as b,
    ):
        assert a.stats().users == b.stats().users == 120
        for uid in ids:
            x, y = a.get_user(uid).profile, b.get_user(uid).profile
            assert x.attributes == y.attributes
            assert [(t.text, t.timestamp) for t in x.texts] == [
                (t.text, t.timestamp) for t in y.texts
            ]
        va, vb = _vectors(a, ids), _vectors(b, ids)
        cosines = [float(va[u] @ vb[u]) for u in ids]
        assert min(cosines) >= 0.99, min(cosines)
        for seed in ("u0000", "u0001", "u0002"):
            ra = [u.user_id for u in a.find_lookalikes(seed_ids=[seed], k=20).users]
            rb = [u.user_id for u in b.find_lookalikes(seed_ids=[seed], k=20).users]
            assert len(set(ra) & set(rb)) >= 18, (ra, rb)


def _worker_pids(name: str) -> list[int]:
    """Processes whose title names `name` (Ray titles its workers ray::<actor class>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if name in cmd and "ray::" in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes (one CPU each) on this machine, joined by this process."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.timeout(600)
def test_two_node_ray_ingest_survives_a_killed_worker(tmp_path: Path, start_server, two_nodes):
    """An encoder worker killed mid-job: Ray restarts it and the job ends with every user
    stored exactly once, with all their texts."""
    from audience.server._ingest import ColumnMap
    from audience.server._ray_ingest import ray_ingest

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    data = tmp_path / "users.tsv"
    _write_tsv(data, users=900, texts_per_user=2, seed=1)
    server = start_server(data_dir=tmp_path / "data")
    cols = ColumnMap("id", ("text",), (("age", "number"), ("gender", "auto")), "ts")
    killed: list[int] = []
    finished = threading.Event()

    def kill_one_worker() -> None:  # once a worker has embedded for a moment
        deadline = time.monotonic() + 300
        while not finished.is_set() and time.monotonic() < deadline:
            pids = _worker_pids("TextVectorActor")
            if pids and server.engine.catalog.store.count() > 0:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60) as client:
        try:
            result, report = ray_ingest(
                client, [data], cols, address=two_nodes.address, workers=2, batch_size=16,
                progress=False,
            )  # fmt: skip
        finally:
            finished.set()
            killer.join()
        assert killed, "no worker was killed while the job ran"
        assert report.users == 900 and report.texts == 1800
        assert client.stats().users == 900
        assert result.upserted >= 900  # a batch sent again after the kill writes the same users
        for uid in (f"u{u:04d}" for u in range(0, 900, 7)):
            assert len(client.get_user(uid).profile.texts) == 2
    store = server.engine.catalog.store
    assert store.count() == 900


@pytest.mark.timeout(600)
def test_segment_placement_on_ray_agrees_with_a_local_build(start_server, two_nodes):
    """`segments build --engine ray` places every user outside the fit sample on Ray tasks
    (chunks across both nodes) and agrees with a local build of the same model."""
    from audience.index import LocalPlacer, RayPlacer

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16)).astype(np.float32)
    fit = centres[rng.integers(0, 6, 3000)] + 0.3 * rng.standard_normal((3000, 16))
    fit_labels = np.argmax(fit @ centres.T, axis=1).astype(np.int32)
    coords = centres[rng.integers(0, 6, 20000)] + 0.5 * rng.standard_normal((20000, 16))
    coords = (coords / np.linalg.norm(coords, axis=1, keepdims=True)).astype(np.float32)
    fit = (fit / np.linalg.norm(fit, axis=1, keepdims=True)).astype(np.float32)
    seen: list[tuple[int, int]] = []
    here = LocalPlacer().place(fit, fit_labels, coords, 15, 0.5)
    there = RayPlacer(chunk=2500).place(
        fit, fit_labels, coords, 15, 0.5, lambda stage, done, total: seen.append((done, total))
    )
    assert (here[0] == there[0]).mean() >= 0.99
    assert np.allclose(here[1], there[1])
    assert seen[-1] == (20000, 20000) and len(seen) == 8

    # Through the server: a build on Ray and a local one of the same model (reducer pca and
    # the same seed: the same fit) give every user the same segment.
    server = start_server()
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        client.upsert_users(
            [Profile(f"{t}-{i}", texts=[text], attributes={"age": 30})
             for t, texts in HOBBIES.items() for i, text in enumerate(texts * 4)],
        )  # fmt: skip
        ids = [u for u in server.engine.catalog.iid_of]
        builds = {}
        for engine in ("local", "ray"):
            done = client.build_segments(
                reducer="pca", sample_size=60, min_cluster_size=5, engine=engine
            )
            assert done.users == len(ids)
            builds[engine] = {m.user_id: m.segment_id for m in client.get_user_segments(ids)}
        same = sum(builds["local"][u] == builds["ray"][u] for u in ids) / len(ids)
        assert same >= 0.99, same


# ---------------------------------------------------------------- read replicas


def _stats_replication(target: str):
    with AudienceClient(target) as c:
        return c.stats().replication


def _wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.timeout(600)
def test_primary_and_replica(tmp_path: Path, embedder):
    """Two real server processes: what the primary publishes reaches the replica (writes and
    erasures alike), the replica refuses writes naming the primary, a damaged generation is
    refused and the previous one kept, and the replica keeps answering when the primary is
    killed. A client over both spreads reads and sends writes to the primary."""
    from audience.index._durable import seal_json, write_durably

    pub = tmp_path / "published"
    primary_dir, replica_dir = tmp_path / "primary", tmp_path / "replica"
    _seed_export(primary_dir, embedder)
    primary = _serve(primary_dir, tmp_path, "--publish-to", str(pub))
    replica = None
    try:
        p_target = _wait_serving(primary)
        replica = _serve(
            replica_dir, tmp_path, "--replica-of", str(pub), "--primary", p_target,
            "--poll-every", "0.2",
        )  # fmt: skip
        profiles = [
            Profile(f"{t}-{i}", texts=[text], attributes={"age": 20 + i, "gender": "f"})
            for t, texts in HOBBIES.items()
            for i, text in enumerate(texts)
        ]
        with AudienceClient(p_target, timeout=60) as pc:
            pc.upsert_users(profiles)
            first = pc.publish()
            assert first.generation == 1 and first.users == len(profiles)
            r_target = _wait_serving(replica)
            with AudienceClient(r_target, timeout=60) as rc:
                want = [u.user_id for u in pc.find_lookalikes(seed_ids=["cook-0"], k=5).users]
                got = [u.user_id for u in rc.find_lookalikes(seed_ids=["cook-0"], k=5).users]
                assert got == want
                rep = rc.stats().replication
                assert rep.role == "replica" and rep.generation == 1 and rep.primary == p_target
                assert 0 <= rep.lag_s < 120
                with pytest.raises(FailedPrecondition, match=p_target.replace(".", r"\.")):
                    rc.upsert_users([Profile("x", texts=["hello"])])
                with pytest.raises(FailedPrecondition, match="read replica"):
                    rc.delete_users(["cook-0"])

                # A write and an erasure on the primary reach the replica with the next
                # generation, not before.
                pc.upsert_users([Profile("new-1", texts=["I bake bread and pastries"])])
                pc.delete_users(["cook-1"])
                assert rc.stats().users == len(profiles)
                second = pc.publish()
                assert second.generation == 2
                _wait_for(lambda: rc.stats().replication.generation == 2, what="generation 2")
                assert rc.stats().users == len(profiles)  # one more, one erased
                assert rc.get_user("new-1").profile.user_id == "new-1"
                with pytest.raises(NotFound):
                    rc.get_user("cook-1")

                # A damaged generation: refused, generation 2 still served.
                third = pub / "gen-00000003"
                shutil.copytree(pub / "gen-00000002", third)
                store = third / "profiles.sqlite3"
                blob = bytearray(store.read_bytes())
                blob[len(blob) // 2] ^= 0xFF
                store.write_bytes(bytes(blob))
                write_durably(pub / "CURRENT", seal_json({
                    "generation": 3, "dir": "gen-00000003", "published_at": time.time(),
                    "users": 0,
                }))  # fmt: skip
                _wait_for(lambda: "refused" in rc.stats().replication.last_error, what="refusal")
                assert rc.stats().replication.generation == 2
                assert "checksum mismatch" in rc.stats().replication.last_error

                # Reads spread over both with round_robin; writes go to the primary.
                with AudienceClient([p_target, r_target], primary=p_target) as both:
                    for _ in range(6):
                        assert both.find_lookalikes(seed_ids=["code-0"], k=3).users
                    both.upsert_users([Profile("new-2", texts=["pasta from scratch"])])
                assert pc.get_user("new-2").profile.user_id == "new-2"

                # The primary killed: the replica keeps answering.
                primary.kill()
                primary.wait(timeout=30)
                for _ in range(5):
                    assert rc.find_lookalikes(seed_ids=["code-0"], k=3).users
    finally:
        for proc in (primary, replica):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
