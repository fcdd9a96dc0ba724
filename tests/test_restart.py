"""The server as a real process: health while loading, SIGTERM, kill -9, same answers after."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audience.client import AudienceClient, Profile
from audience.server import _process
from conftest import ATTRIBUTES, crafted_profiles

QUERIES = [
    {"seed_ids": ["cook-0"], "k": 5},
    {"seed_ids": ["code-1", "code-2"], "k": 8, "filters": ["gender=female"]},
    {"seed_texts": ["a football match"], "k": 4, "filters": ["age>=30"]},
]


class ServerProcess:
    def __init__(self, data_dir: Path, tmp: Path) -> None:
        self.port_file = tmp / f"port-{time.monotonic_ns()}"
        args = [
            sys.executable,
            "-m",
            "audience.server",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
        ]
        for a in ATTRIBUTES:
            args += ["--attribute", a]
        self.log = open(tmp / "server.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            assert self.proc.poll() is None, "server exited during start"
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.target = f"127.0.0.1:{self.port}"

    def health_statuses(self, until_serving: float = 120.0) -> list[int]:
        seen = []
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + until_serving
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                except grpc.RpcError:
                    time.sleep(0.05)
                    continue
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return seen
                time.sleep(0.05)
        raise AssertionError(f"never SERVING: {seen}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def answers(client: AudienceClient) -> list[list[tuple[str, float]]]:
    return [
        [(u.user_id, round(u.score, 5)) for u in client.find_lookalikes(**q).users] for q in QUERIES
    ]


@pytest.mark.timeout(300)
def test_restart_gives_same_answers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data, tmp_path)
    statuses = first.health_statuses()
    assert statuses[0] == health_pb2.HealthCheckResponse.NOT_SERVING  # loading the model
    assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    if _process.huge_pages_available():  # re-executed itself under the tunable, keeping its pid
        environ = Path(f"/proc/{first.proc.pid}/environ").read_bytes().split(b"\0")
        assert any(e.startswith(b"GLIBC_TUNABLES=") and b"hugetlb=1" in e for e in environ)
        assert b"transparent huge pages on" in (tmp_path / "server.log").read_bytes()
    with AudienceClient(first.target) as c:
        c.upsert_users(crafted_profiles())
        c.delete_users(["ball-5"])
        before = answers(c)
        stats = c.stats()
    # the leading dimensions come from texts, the rest from the declared attributes
    assert 0 < stats.text_dimension < stats.dimension
    assert first.stop(signal.SIGTERM) == 0
    assert sorted(p.name for p in (data / "index").glob("gen-*.faiss"))  # saved on shutdown

    second = ServerProcess(data, tmp_path)
    second.health_statuses()
    with AudienceClient(second.target) as c:
        assert answers(c) == before
        assert c.stats().users == stats.users == 17
        # Acknowledged after the last saved generation, then kill -9: replayed from the store.
        c.upsert_users(
            [
                Profile(
                    "late-1",
                    texts=["sourdough starter and rye bread baking"],
                    attributes={"age": 40, "gender": "female"},
                )
            ]
        )
        c.delete_users(["cook-1"])
        after_writes = answers(c)
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL

    third = ServerProcess(data, tmp_path)
    third.health_statuses()
    with AudienceClient(third.target) as c:
        assert answers(c) == after_writes
        assert c.get_user("late-1").profile.attributes["gender"] == "female"
        s = c.stats()
        assert s.users == s.indexed == 17
        ids = {u.user_id for u in c.find_lookalikes(seed_ids=["cook-0"], k=20).users}
        assert "cook-1" not in ids and "late-1" in ids
    assert third.stop() == 0
    assert b"sourdough" not in (tmp_path / "server.log").read_bytes()  # no raw text in logs
