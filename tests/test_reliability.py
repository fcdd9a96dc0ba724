"""Reliability, second round: erasure that reaches every copy, truthful errors on a full disk,
files and rows that fail their checksums found and recovered, one server per data dir, a
shutdown that a second signal ends. A real server, the real model, real files."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_segments import population

from audience.client import (
    AudienceClient,
    AudienceError,
    NotFound,
    Profile,
    ServerError,
)
from audience.index._erasure import restore_snapshot
from conftest import ATTRIBUTES


def _mentions(root: Path, user_id: str) -> list[str]:
    """Files under `root` whose bytes hold `user_id` (not as the start of a longer id)."""
    pattern = re.compile(re.escape(user_id.encode()) + rb"(?![0-9A-Za-z_-])")
    return [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*"))
        if p.is_file() and pattern.search(p.read_bytes())
    ]


# ---------------------------------------------------------------- erasure


def test_erasing_an_exemplar_reaches_every_copy(start_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data_dir=data)
    target = f"127.0.0.1:{server.port}"
    with AudienceClient(target, timeout=120) as c:
        c.upsert_users(population(12, prefix="zq"))
        c.build_segments(reducer="pca", min_cluster_size=6)
        c.build_segments(reducer="pca", min_cluster_size=6)  # two saved model versions
        seg = c.list_segments()[0]
        victim = seg.exemplar_user_ids[0]
        snap = Path(c.snapshot().path)  # a snapshot inside the data dir ...
        offsite = tmp_path / "offsite"
        shutil.copytree(snap, offsite)  # ... and a copy outside it, made before the delete
        assert _mentions(data, victim), "the victim should be on disk before the delete"

        assert c.delete_users([victim]).deleted == 1
        with pytest.raises(NotFound):
            c.get_user(victim)
        with pytest.raises(NotFound):
            c.get_user_segments([victim])
        for s in c.list_segments():
            assert victim not in s.exemplar_user_ids
        fresh = c.get_segment(seg.segment_id)
        assert fresh.exemplar_user_ids and victim not in fresh.exemplar_user_ids
        members = [u.user_id for u in c.stream_segment_members(seg.segment_id)]
        assert members and victim not in members
        near = c.find_lookalikes(seed_ids=[fresh.exemplar_user_ids[0]], k=40, include_seeds=True)
        assert victim not in [u.user_id for u in near.users]
        assert _mentions(data, victim) == []  # store, WAL, segment models, snapshots, ...

    server.stop()
    again = start_server(data_dir=data)  # and after a restart
    with AudienceClient(f"127.0.0.1:{again.port}", timeout=60) as c:
        assert all(victim not in s.exemplar_user_ids for s in c.list_segments())
        with pytest.raises(NotFound):
            c.get_user(victim)
    again.stop()
    assert _mentions(data, victim) == []

    # A backup made before the delete, restored: the erasures recorded since reach it.
    assert _mentions(offsite, victim)
    for restored, source, live in (
        (tmp_path / "restored-inside", snap, None),  # the snapshot kept in the data dir
        (tmp_path / "restored-offsite", offsite, data),  # the old copy, with the live erasures
    ):
        restore_snapshot(source, restored, live=live)
        copy = start_server(data_dir=restored)
        with AudienceClient(f"127.0.0.1:{copy.port}", timeout=60) as c:
            with pytest.raises(NotFound):
                c.get_user(victim)
            assert c.stats().users == 35
        copy.stop()
        assert _mentions(restored, victim) == [], restored


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs at tmp_path/disk (needs root: CAP_SYS_ADMIN to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fat_profiles(start: int, n: int) -> list[Profile]:
    """Users whose attributes take ~30 KB each (filling a disk without embedding much)."""
    filler = {f"note{j}": ("x" * 1000) for j in range(30)}
    ids = range(start, start + n)
    return [Profile(f"fat-{i}", texts=["bread"], attributes=filler) for i in ids]


@pytest.mark.timeout(600)
def test_a_full_disk_answers_resource_exhausted_and_the_truth(start_server, small_disk) -> None:
    data = small_disk / "data"
    server = start_server(data_dir=data, save_every_changes=5, lexical_dim=0)
    ok: set[str] = set()
    failed: set[str] = set()
    codes: list[str] = []
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60, retries=0) as c:
        next_id = 0
        while codes.count("RESOURCE_EXHAUSTED") < 5 and next_id < 2000:
            batch = _fat_profiles(next_id, 4)
            next_id += 4
            try:
                c.upsert_users(batch, batch_size=4)
                ok.update(p.user_id for p in batch)
            except AudienceError as exc:
                codes.append(exc.code)
                failed.update(p.user_id for p in batch)
                assert "no space left" in exc.details, exc.details
        assert codes.count("RESOURCE_EXHAUSTED") == 5, codes
        assert set(codes) == {"RESOURCE_EXHAUSTED"}, codes  # never INTERNAL or UNKNOWN
        warnings = c.stats().warnings  # until a write gets through again
        assert any("disk is full: writes fail since" in w for w in warnings), warnings
        # Everything else that writes says the same, and reads go on.
        for call in (c.snapshot, c.rebuild_index):
            try:
                call()
            except AudienceError as exc:
                assert exc.code == "RESOURCE_EXHAUSTED", (call.__name__, exc)
        try:
            c.delete_users(["fat-0"])
            ok.discard("fat-0")
            failed.add("fat-0")  # deleted: absent from now on
        except AudienceError as exc:
            assert exc.code == "RESOURCE_EXHAUSTED", exc
        stats = c.stats()
        assert stats.users == len(ok)
        assert any("failed" in w for w in stats.warnings), stats.warnings  # a save, retried
    server.stop()  # its last save fails too: the store has every acknowledged write

    # The operator frees space; the server starts and holds exactly what it acknowledged.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = start_server(data_dir=data, lexical_dim=0)
    with AudienceClient(f"127.0.0.1:{again.port}", timeout=60) as c:
        present = {uid for uid in ok | failed if _exists(c, uid)}
        assert present == ok  # acknowledged: there; answered with an error: not
        assert c.stats().users == c.stats().indexed == len(ok)
    again.stop()  # before the disk goes


def _exists(client: AudienceClient, user_id: str) -> bool:
    try:
        client.get_user(user_id)
        return True
    except NotFound:
        return False


# ---------------------------------------------------------------- files and rows checked


def test_tampered_files_are_found_recovered_and_reported(start_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        c.upsert_users(population(20))  # 60 users: a lexical model is fitted
        c.rebuild_index()
        c.build_segments(reducer="pca", min_cluster_size=8)
        first = [(s.segment_id, s.size) for s in c.list_segments()]
        c.build_segments(reducer="pca", min_cluster_size=8)
    server.stop()

    current = (data / "segments" / "CURRENT").read_text().strip()
    model_json = data / "segments" / current / "model.json"
    model_json.write_text(re.sub(r'"size": (\d+)', '"size": 9999', model_json.read_text(), count=1))
    lexical = data / "lexical" / "lexical.json"
    lexical.write_text(lexical.read_text().replace('"documents": 60', '"documents": 61'))
    manifests = sorted((data / "index").glob("gen-*.json"))
    manifests[0].write_text("{not json")

    again = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{again.port}") as c:
        warnings = c.stats().warnings
        assert any("segment model" in w and current in w for w in warnings), warnings
        assert any("lexical" in w for w in warnings), warnings
        assert any(manifests[0].name in w for w in warnings), warnings
        sizes = [(s.segment_id, s.size) for s in c.list_segments()]
        assert 9999 not in [size for _, size in sizes]
        assert sizes == first  # the version before, which verifies
        assert c.stats().lexical_documents == 60  # refitted from the store


def test_a_damaged_vector_is_found_and_repaired(start_server, tmp_path: Path, embedder) -> None:
    data = tmp_path / "data"
    _seed_export(data, embedder)  # for `audience check --repair`, which loads the model
    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}") as c:
        c.upsert_users(population(8))
        good = np.frombuffer(c.get_user("cook-3", include_vector=True).vector, "<f4").copy()
    server.stop()

    db = sqlite3.connect(data / "profiles.sqlite3")
    (vec,) = db.execute("SELECT vec FROM users WHERE user_id='cook-3'").fetchone()
    flipped = bytearray(vec)
    flipped[7] ^= 0x7F  # the exponent of the second value: a huge number
    db.execute("UPDATE users SET vec=? WHERE user_id='cook-3'", (bytes(flipped),))
    db.commit()
    db.close()

    again = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{again.port}", retries=0) as c:
        with pytest.raises(ServerError) as err:
            c.get_user("cook-3", include_vector=True)
        assert err.value.code == "DATA_LOSS" and "checksum" in err.value.details
        assert c.get_user("cook-4", include_vector=True).vector  # the others are fine
        deadline = time.monotonic() + 30  # the start check runs in the background
        while not any("fail their vector checksums" in w for w in c.stats().warnings):
            assert time.monotonic() < deadline, c.stats().warnings
            time.sleep(0.2)
    again.stop()

    cli = [sys.executable, "-m", "audience.server", "check", "--data-dir", str(data)]
    found = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "damaged: 1" in found.stdout and "'cook-3'" in found.stdout
    fixed = subprocess.run([*cli, "--repair"], capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repaired: 1" in fixed.stdout
    clean = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0 and "damaged: 0" in clean.stdout, clean.stdout

    third = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{third.port}") as c:
        vec = np.frombuffer(c.get_user("cook-3", include_vector=True).vector, "<f4")
        assert float(vec @ good) > 0.98  # computed again from its texts
        top = c.find_lookalikes(seed_ids=["cook-3"], k=3, include_seeds=True).users[0]
        assert top.user_id == "cook-3" and top.score == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------- one server per data dir


def _seed_export(data_dir: Path, embedder) -> None:
    """The session's model export copied into a data dir: a server process starts without
    exporting the model again."""
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    source = Path(embedder.directory)
    shutil.copytree(source, models / source.name)


def _serve(data_dir: Path, tmp: Path, *extra: str, port: str = "0") -> subprocess.Popen:
    port_file = tmp / f"port-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "audience.server", "serve", "--data-dir", str(data_dir)]
    args += ["--port", port, "--port-file", str(port_file), "--no-huge-pages", *extra]
    for a in ATTRIBUTES:
        args += ["--attribute", a]
    log = tmp / f"server-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    proc.port_file = port_file  # type: ignore[attr-defined]
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen, timeout: float = 60) -> str:
    proc.wait(timeout=timeout)
    return proc.log.read_text()  # type: ignore[attr-defined]


def _wait_serving(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 120
    while not proc.port_file.exists():  # type: ignore[attr-defined]
        assert proc.poll() is None, proc.log.read_text()  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    target = f"127.0.0.1:{proc.port_file.read_text().strip()}"  # type: ignore[attr-defined]
    with AudienceClient(target) as c:
        c.wait_ready(120)
    return target


@pytest.mark.timeout(300)
def test_a_second_server_on_the_same_data_dir_or_port_fails_fast(tmp_path: Path, embedder):
    data = tmp_path / "data"
    _seed_export(data, embedder)
    first = _serve(data, tmp_path)
    try:
        target = _wait_serving(first)
        port = target.rsplit(":", 1)[1]
        same_dir = _serve(data, tmp_path)
        out = _output(same_dir)
        assert same_dir.returncode == 2, out
        assert f"in use by another Audience process (pid {first.pid})" in out
        other = tmp_path / "other"
        _seed_export(other, embedder)
        same_port = _serve(other, tmp_path, port=port)
        out = _output(same_port)
        assert same_port.returncode == 2, out
        assert f"cannot listen on 127.0.0.1:{port}" in out
        with AudienceClient(target) as c:  # the first one serves on
            c.upsert_users([Profile("still-here", texts=["bread"])])
            assert c.get_user("still-here").profile.user_id == "still-here"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


@pytest.mark.timeout(300)
def test_a_second_sigterm_stops_the_server_within_the_grace_period(tmp_path: Path, embedder):
    data = tmp_path / "data"
    _seed_export(data, embedder)
    config = tmp_path / "audience.toml"
    config.write_text("[server]\ngrace_seconds = 5\n")
    proc = _serve(data, tmp_path, "--config", str(config))
    target = _wait_serving(proc)
    stop_writing = threading.Event()

    def write() -> None:
        with AudienceClient(target, retries=0, timeout=30) as c:
            i = 0
            while not stop_writing.is_set():
                try:
                    c.upsert_users(population(20, seed=i, prefix=f"w{i}-"), batch_size=60)
                except AudienceError:
                    return
                i += 1

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(2.0)  # writes under way
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    took = time.monotonic() - t0
    stop_writing.set()
    writer.join(timeout=60)
    assert took < 5.0 + 1.0, f"stopped after {took:.1f}s"
    assert "second signal" in _output(proc)


# ---------------------------------------------------------------- auth


def test_the_auth_scheme_is_case_insensitive(start_server) -> None:
    from audience.client._proto import audience_pb2 as pb
    from audience.client._proto import audience_pb2_grpc as pb_grpc
    from audience.server._config import hash_token

    server = start_server(tokens=((hash_token("s3cret"), "admin"),))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AdminStub(channel)
        for scheme in ("Bearer", "bearer", "BEARER"):
            meta = (("authorization", f"{scheme} s3cret"),)
            assert stub.GetStats(pb.GetStatsRequest(), metadata=meta, timeout=10).users == 0
        with pytest.raises(grpc.RpcError) as err:
            stub.GetStats(pb.GetStatsRequest(), metadata=(("authorization", "Basic s3cret"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
