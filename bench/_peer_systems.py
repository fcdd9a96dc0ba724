"""The vector databases `bench/run.py peers` sets beside Audience, one per process.

Run as a process: `python bench/_peer_systems.py SYSTEM build|serve WORKDIR`. WORKDIR holds
what bench/_peers.py prepared (vectors.npy, tier.npy, queries.npz); each system keeps its data
in WORKDIR/SYSTEM. `build` loads the vectors and builds the index (timed); `serve` opens the
data on disk, answers one query and prints READY (the parent times process start to READY:
the restart), then tunes the search effort to the smallest of a ladder reaching recall@100
>= 0.95 on the tuning queries, and times the 1,000 queries with it: 1 client, 8 concurrent
clients, and the same queries with a filter (an attribute equal to a value 10% of users hold).
Results go to WORKDIR/SYSTEM-MODE.json.

Servers run as their own process and are called through their own client and protocol:
Milvus Lite (`milvus-lite server`, pymilvus over gRPC), Chroma (`chroma run`, its HTTP
client). Libraries (LanceDB, bare FAISS HNSW) run in this process: the no-network limit.
Every system searches k + 20 and drops the 20 seeds, as Audience does inside FindLookalikes.

Each system is set up as its documentation recommends for about a million vectors:
- faiss_hnsw: `HNSW32,Flat` (IndexHNSWFlat, M = 32, faiss' efConstruction 40), inner product;
  the filter as an IDSelectorBitmap.
- milvus_lite: an HNSW index (M = 16, efConstruction = 200: its defaults), metric IP, the
  tier an INT64 scalar field.
- chroma_server: HNSW with Chroma's defaults (max_neighbors 16, ef_construction 100),
  space "ip", the tier as metadata; ef_search tuned through `collection.modify`.
- lancedb: IVF_PQ (LanceDB's default index: partitions and sub-vectors as it chooses for the
  table), distance "dot", tuned over nprobes and refine_factor; a BITMAP scalar index on tier
  and the filter applied before the search (prefilter).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

K = 100
SEEDS = 20
GOAL_RECALL = 0.95
HNSW_LADDER = [120, 160, 200, 256, 320, 400, 512, 768, 1024]  # k + seeds is the least ef
# (nprobes, refine_factor): the refine re-ranks nprobes' candidates with the full vectors.
LANCE_LADDER = [(20, 2), (20, 5), (40, 5), (40, 10), (80, 10), (160, 10), (320, 20)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def spawn(home: Path, exe: str, command: str, data_flag: str, port: int):
    """`exe command DATA_FLAG home --host 127.0.0.1 --port port` beside this Python, its output
    in home's parent/EXE.log; (process, log file)."""
    log = open(home.parent / f"{exe}.log", "ab")
    args = [str(Path(sys.executable).with_name(exe)), command, data_flag, str(home)]
    proc = subprocess.Popen(
        [*args, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    return proc, log


def wait_up(proc: subprocess.Popen, what: str, probe):
    """probe()'s answer once it stops raising (RuntimeError if `proc` exits or 600 s pass)."""
    deadline = time.monotonic() + 600
    while True:
        try:
            return probe()
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class InProcess:
    """A library searched in this process: every client thread shares the one handle."""

    kind = "library"

    def handle(self):
        return self

    def server_pids(self) -> list[int]:
        return []  # this process serves

    def close(self) -> None:
        pass


class FaissHnsw(InProcess):
    ladder = HNSW_LADDER
    config = "HNSW32,Flat (M 32, efConstruction 40), inner product"

    def __init__(self, home: Path) -> None:
        self.path = home / "index.faiss"
        self.tier: np.ndarray | None = None
        self.selectors: dict[int, object] = {}

    def build(self, vectors: np.ndarray, tier: np.ndarray) -> None:
        import faiss

        index = faiss.index_factory(vectors.shape[1], "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
        for s in range(0, len(vectors), 100_000):
            index.add(vectors[s : s + 100_000])
        faiss.write_index(index, str(self.path))
        np.save(self.path.with_suffix(".tier.npy"), tier)

    def open(self) -> None:
        import faiss

        self.index = faiss.read_index(str(self.path))
        self.tier = np.load(self.path.with_suffix(".tier.npy"))

    def search(self, q: np.ndarray, k: int, effort: int, tier: int | None) -> list[int]:
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = effort
        if tier is not None:
            if tier not in self.selectors:
                bits = np.packbits(self.tier == tier, bitorder="little")
                sel = faiss.IDSelectorBitmap(len(self.tier), faiss.swig_ptr(bits))
                self.selectors[tier] = (sel, bits)  # the selector reads `bits`: keep both
            params.sel = self.selectors[tier][0]
        return self.index.search(q[None, :], k, params=params)[1][0].tolist()


class LanceDb(InProcess):
    ladder = LANCE_LADDER
    config = "IVF_PQ (LanceDB's default partitions and sub-vectors), dot; BITMAP index on tier"

    def __init__(self, home: Path) -> None:
        self.home = home

    def build(self, vectors: np.ndarray, tier: np.ndarray) -> None:
        import lancedb
        import pyarrow as pa

        db = lancedb.connect(str(self.home))
        dim = vectors.shape[1]
        schema = pa.schema(
            [
                ("id", pa.int64()),
                ("tier", pa.int32()),
                ("vector", pa.list_(pa.float32(), dim)),
            ]
        )

        def batches():
            for s in range(0, len(vectors), 100_000):
                chunk = vectors[s : s + 100_000]
                yield pa.record_batch(
                    [
                        pa.array(np.arange(s, s + len(chunk), dtype=np.int64)),
                        pa.array(tier[s : s + len(chunk)].astype(np.int32)),
                        pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), dim),
                    ],
                    schema=schema,
                )

        from lancedb.index import Bitmap, IvfPq

        table = db.create_table("bench", data=batches(), schema=schema)
        table.create_index("vector", config=IvfPq(distance_type="dot"))
        table.create_index("tier", config=Bitmap())

    def open(self) -> None:
        import lancedb

        self.table = lancedb.connect(str(self.home)).open_table("bench")

    def search(self, q: np.ndarray, k: int, effort, tier: int | None) -> list[int]:
        nprobes, refine = effort
        query = self.table.search(q).distance_type("dot").limit(k).nprobes(nprobes)
        query = query.refine_factor(refine).select(["id", "_distance"])
        if tier is not None:
            query = query.where(f"tier = {tier}", prefilter=True)
        return query.to_arrow().column("id").to_pylist()


class MilvusLite:
    kind = "server"
    ladder = HNSW_LADDER
    config = "`milvus-lite server`, HNSW (M 16, efConstruction 200), IP; pymilvus over gRPC"

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        port = free_port()
        self.proc, self.log = spawn(self.home, "milvus-lite", "server", "--data-dir", port)
        self.uri = f"http://127.0.0.1:{port}"
        wait_up(self.proc, "milvus-lite server", lambda: socket.create_connection(
            ("127.0.0.1", port), timeout=1).close())  # fmt: skip
        self.client = self.handle()

    def handle(self):
        from pymilvus import MilvusClient

        return _MilvusHandle(MilvusClient(uri=self.uri, timeout=600))

    def build(self, vectors: np.ndarray, tier: np.ndarray) -> None:
        from pymilvus import DataType, MilvusClient

        self._start()
        c = self.client.client
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("tier", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        params = c.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type="HNSW",
            metric_type="IP",
            params={"M": 16, "efConstruction": 200},
        )
        c.create_collection("bench", schema=schema, index_params=params)
        for s in range(0, len(vectors), 10_000):
            rows = [
                {"id": i, "tier": int(tier[i]), "vector": vectors[i]}
                for i in range(s, min(s + 10_000, len(vectors)))
            ]
            c.insert("bench", rows)
        c.flush("bench")
        c.load_collection("bench")  # the segments' indexes are built by now
        self.close()

    def open(self) -> None:
        self._start()
        self.client.client.load_collection("bench")

    def search(self, q, k, effort, tier):
        return self.client.search(q, k, effort, tier)

    def server_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def close(self) -> None:
        if self.proc:
            self.client.client.close()
            self.proc.terminate()
            self.proc.wait(timeout=300)
            self.log.close()
            self.proc = None


class _MilvusHandle:
    def __init__(self, client) -> None:
        self.client = client

    def search(self, q: np.ndarray, k: int, effort: int, tier: int | None) -> list[int]:
        hits = self.client.search(
            "bench",
            data=[q.tolist()],
            limit=k,
            search_params={"metric_type": "IP", "params": {"ef": effort}},
            filter=f"tier == {tier}" if tier is not None else "",
        )[0]
        return [int(h["id"]) for h in hits]


class ChromaServer:
    kind = "server"
    ladder = HNSW_LADDER
    config = "`chroma run`, HNSW (max_neighbors 16, ef_construction 100), ip; HttpClient"

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.effort = None

    def _start(self) -> None:
        port = free_port()
        self.proc, self.log = spawn(self.home, "chroma", "run", "--path", port)
        self.port = port

        def up():
            client = self.handle()
            client.client.heartbeat()
            return client

        self.client = wait_up(self.proc, "chroma run", up)

    def handle(self):
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=Settings(anonymized_telemetry=False)
        )
        return _ChromaHandle(client, self)

    def build(self, vectors: np.ndarray, tier: np.ndarray) -> None:
        self._start()
        c = self.client.client
        coll = c.create_collection(
            "bench",
            configuration={"hnsw": {"space": "ip", "max_neighbors": 16, "ef_construction": 100}},
        )
        step = min(5000, c.get_max_batch_size())
        for s in range(0, len(vectors), step):
            e = min(s + step, len(vectors))
            coll.add(
                ids=[str(i) for i in range(s, e)],
                embeddings=vectors[s:e],
                metadatas=[{"tier": int(t)} for t in tier[s:e]],
            )
        self.close()

    def open(self) -> None:
        self._start()

    def set_effort(self, effort: int) -> None:
        if effort != self.effort:
            coll = self.client.client.get_collection("bench")
            coll.modify(configuration={"hnsw": {"ef_search": effort}})
            self.effort = effort

    def search(self, q, k, effort, tier):
        return self.client.search(q, k, effort, tier)

    def server_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=300)
            self.log.close()
            self.proc = None


class _ChromaHandle:
    def __init__(self, client, owner: ChromaServer) -> None:
        self.client = client
        self.owner = owner
        self.coll = None

    def search(self, q: np.ndarray, k: int, effort: int, tier: int | None) -> list[int]:
        self.owner.set_effort(effort)
        if self.coll is None:
            self.coll = self.client.get_collection("bench")
        got = self.coll.query(
            query_embeddings=q[None, :],
            n_results=k,
            where={"tier": tier} if tier is not None else None,
            include=[],
        )
        return [int(i) for i in got["ids"][0]]


SYSTEMS = {
    "faiss_hnsw": FaissHnsw,
    "lancedb": LanceDb,
    "milvus_lite": MilvusLite,
    "chroma_server": ChromaServer,
}


def _answers(handle, qvecs, seeds, effort, tier=None) -> tuple[list[float], list[list[int]]]:
    """(ms per query, the 100 non-seed ids each) for one client, in query order."""
    lat, out = [], []
    for q, s in zip(qvecs, seeds):
        t0 = time.perf_counter()
        ids = handle.search(q, K + SEEDS, effort, tier)
        lat.append((time.perf_counter() - t0) * 1000)
        drop = set(s.tolist())
        out.append([i for i in ids if i not in drop][:K])
    return lat, out


def recall(got: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t.tolist())) / len(t) for g, t in zip(got, truth)]))


def _concurrent(system, qvecs, seeds, effort, clients: int = 8) -> float:
    handles = [system.handle() for _ in range(clients)]
    for h in handles:
        h.search(qvecs[0], K + SEEDS, effort, None)  # connected before the clock starts
    barrier = threading.Barrier(clients + 1)

    def work(h, idx):
        barrier.wait()
        for i in idx:
            h.search(qvecs[i], K + SEEDS, effort, None)

    order = np.concatenate([np.arange(len(qvecs))] * 2)
    threads = [
        threading.Thread(target=work, args=(h, order[c::clients])) for c, h in enumerate(handles)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return len(order) / (time.perf_counter() - t0)


def serve(system, work: Path) -> dict:
    qz = np.load(work / "queries.npz")
    system.open()
    system.search(qz["warm"][0], K + SEEDS, system.ladder[-1], None)
    print("READY", flush=True)
    warm = qz["warm"]
    for effort in system.ladder:  # tune: the least effort reaching the goal
        _answers(system, warm[:20], qz["warm_seeds"][:20], effort)
        got = _answers(system, qz["tune"], qz["tune_seeds"], effort)[1]
        tuned = recall(got, qz["tune_truth"])
        if tuned >= GOAL_RECALL:
            break
    _answers(system, warm, qz["warm_seeds"], effort)
    lat, got = _answers(system, qz["queries"], qz["seeds"], effort)
    out = {
        "effort": effort,
        "tune_recall_at_100": tuned,
        "recall_at_100": recall(got, qz["truth"]),
        "qps_single": len(lat) / (sum(lat) / 1000),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }
    out["qps_8_clients"] = _concurrent(system, qz["queries"], qz["seeds"], effort)
    tier = int(qz["filter_tier"])
    lat, got = _answers(system, qz["queries"], qz["seeds"], effort, tier)
    out["filtered_qps"] = len(lat) / (sum(lat) / 1000)
    out["filtered_p50_ms"] = float(np.percentile(lat, 50))
    out["filtered_recall_at_100"] = recall(got, qz["filtered_truth"])
    pids = system.server_pids() or [os.getpid()]
    out["rss_bytes"] = sum(peak_rss(pid) for pid in pids)
    return out


def main(name: str, mode: str, work: Path) -> None:
    home = work / name
    system = SYSTEMS[name](home)
    try:
        if mode == "build":
            if home.exists():
                shutil.rmtree(home)
            home.mkdir(parents=True)
            vectors = np.load(work / "vectors.npy", mmap_mode="r")
            tier = np.load(work / "tier.npy")
            t0 = time.perf_counter()
            system.build(np.ascontiguousarray(vectors), tier)
            out = {"build_s": time.perf_counter() - t0, "config": system.config}
            out["disk_bytes"] = disk_bytes(home)
        else:
            out = serve(system, work)
    finally:
        system.close()
    (work / f"{name}-{mode}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
