"""A bare gRPC server with no Audience code in it: the floor under FindLookalikes latency.

Run as a process (`python bench/_grpc_floor.py PORT_FILE`). Its one unary method takes an
8-byte double (milliseconds of work), runs as much work as took that long on a hot core, with
the GIL released (as a faiss search does), and answers with a prebuilt 100-user
LookalikeResponse. Same grpcio, same thread-pool server and socket I/O as `audience serve`.
`FloorClient(target).latencies(work_ms, calls)` times it from a bare stub: what any Python
gRPC service would add on this machine around a call of that length.

`python bench/_grpc_floor.py PORT_FILE --engine DATA_DIR [OPTIONS_JSON]` (EngineFloorServer)
is the second floor: a bare grpcio server around the same engine call, with the process
settings of `audience serve` and its request and response conversion, but none of the rest of
the server (interceptors, health, reflection, jobs): what the engine itself costs behind gRPC
at a server's pace, which the first floor's hot, GIL-free work does not pay.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

from _harness import spawn_listening

METHOD = "/bench.Floor/Work"


def _listen(server, port_file: str) -> None:
    """Start `server` on a free port, write the port to `port_file` (atomically), serve."""
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(f"{port_file}.tmp", "w") as f:
        f.write(str(port))
    os.replace(f"{port_file}.tmp", port_file)
    server.wait_for_termination()


def _serve(port_file: str) -> None:
    # First, before grpc loads: the same grpc socket I/O as `audience serve` (_process.py).
    os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import numpy as np

    from audience.client._proto import audience_pb2 as pb

    response = pb.LookalikeResponse(eligible=1_000_000)
    for i in range(100):
        response.users.add(user_id=f"u{i * 7919}", score=0.9 - i / 1000)
    payload = response.SerializeToString()
    a = np.random.default_rng(0).random((96, 96), dtype=np.float32)

    # A fixed amount of work per call (not a time): calibrated here on a hot core, so that a
    # call runs slower after the process wakes, as a real search does.
    for _ in range(500):
        a @ a
    t0 = time.perf_counter()
    for _ in range(5000):
        a @ a  # BLAS runs with the GIL released
    per_ms = 5000 / ((time.perf_counter() - t0) * 1000)

    def work(request: bytes, context) -> bytes:
        (ms,) = struct.unpack("<d", request)
        for _ in range(round(ms * per_ms)):
            a @ a
        return payload

    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(work)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Floor", {"Work": handler}),)
    )
    _listen(server, port_file)


def _serve_engine(port_file: str, data_dir: str, options: dict) -> None:
    from audience.server import _process

    _process.apply(_process.ProcessSettings())  # before grpc loads; may re-exec this process
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from audience.client._proto import audience_pb2 as pb
    from audience.client._proto import audience_pb2_grpc as pb_grpc
    from audience.index import Engine, EngineConfig
    from audience.server._convert import query_from_pb, with_scored

    engine = Engine.open(EngineConfig(data_dir=Path(data_dir), lexical_dim=0, **options))

    class Lookalike(pb_grpc.LookalikeServicer):
        def FindLookalikes(self, request, context):
            found = engine.find_lookalikes(query_from_pb(request))
            return with_scored(pb.LookalikeResponse(eligible=found.eligible), found.users)

    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_LookalikeServicer_to_server(Lookalike(), server)
    _listen(server, port_file)


class FloorServer:
    """This module as a server process; `target` once it listens."""

    def __init__(self, tmp: Path) -> None:
        port_file = tmp / f"floor-port-{time.monotonic_ns()}"
        self.proc, port = spawn_listening([sys.executable, __file__, str(port_file)], port_file)
        self.target = f"127.0.0.1:{port}"

    def __enter__(self) -> FloorServer:
        return self

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EngineFloorServer(FloorServer):
    """The bare server around the engine over `data_dir` (its own copy: one process per data
    dir), with EngineConfig `options`; `target` once it listens."""

    def __init__(self, tmp: Path, data_dir: Path, options: dict) -> None:
        port_file = tmp / f"engine-floor-port-{time.monotonic_ns()}"
        args = [sys.executable, __file__, str(port_file), "--engine", str(data_dir)]
        self.proc, port = spawn_listening([*args, json.dumps(options)], port_file)
        self.target = f"127.0.0.1:{port}"


class FloorClient:
    """A bare stub on the floor server: `latencies(work_ms, calls)` times calls whose handler
    works `work_ms` (after `warm` untimed ones), in milliseconds."""

    def __init__(self, target: str) -> None:
        import grpc

        self._channel = grpc.insecure_channel(target)
        self._call = self._channel.unary_unary(METHOD)

    def latencies(self, work_ms: float, calls: int, warm: int = 50) -> list[float]:
        request = struct.pack("<d", work_ms)
        for _ in range(warm):
            self._call(request, timeout=30)
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self._call(request, timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
        return lat

    def close(self) -> None:
        self._channel.close()


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[2] == "--engine":
        _serve_engine(sys.argv[1], sys.argv[3], json.loads(sys.argv[4]) if sys.argv[4:] else {})
    else:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core busy, as one search is
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        _serve(sys.argv[1])
