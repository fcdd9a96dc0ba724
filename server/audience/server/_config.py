"""Server configuration: defaults <- TOML file <- command-line flags, in one object.

[server]                      [engine]                          [limits]
host = "127.0.0.1"            data_dir = "./data"               max_k = 10000
port = 50051                  model = "all-MiniLM-L6-v2"        max_batch_users = 1000
max_workers = 16              attribute_weight = 0.2            ...
max_concurrent_rpcs = 256     attributes = ["age:numeric:13:90", "gender:categorical"]
max_message_bytes = 67108864  recency_half_life_days = 180
grace_seconds = 10
huge_pages = true
grpc_poll_io = true
quiet_threads = true
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from audience.index import AttributeSpec, ConfigError, EngineConfig, Limits

DEFAULT_PORT = 50051
ROLES = ("reader", "writer", "admin")  # bearer token roles, each with more rights (_auth.py)


def hash_token(token: str) -> str:
    """What a tokens file and the config hold of a bearer token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port (see port_file)
    max_workers: int = 16  # handler threads
    max_concurrent_rpcs: int = 256  # beyond this, calls get RESOURCE_EXHAUSTED
    max_message_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 10.0  # in-flight calls get this long on SIGTERM
    huge_pages: bool = True  # `audience serve` runs with transparent huge pages (_process)
    grpc_poll_io: bool = True  # `audience serve` sets grpc's poll-based socket I/O (_process)
    quiet_threads: bool = True  # idle OpenMP threads sleep, BLAS single-threaded (_process)
    port_file: Path | None = None  # the bound port is written here once serving
    # Prometheus /metrics over HTTP: off (None), or this port (0 = a free one) on metrics_host.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Bearer tokens: (sha256 hex digest, role); empty = auth off (local use only).
    tokens: tuple[tuple[str, str], ...] = ()
    # TLS: server certificate chain and key (PEM files); a client CA turns on mTLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Read replicas (README, "Scaling out"). A primary publishes generations to publish_to,
    # on demand and every publish_every_s seconds (0 = on demand only), keeping the newest
    # publish_keep; a replica (replica_of) serves the newest one there, polling every
    # poll_s, and answers writes with FAILED_PRECONDITION naming `primary`.
    publish_to: Path | None = None
    publish_every_s: float = 0.0
    publish_keep: int = 2
    replica_of: Path | None = None
    primary: str = ""
    poll_s: float = 2.0
    max_lag_s: float | None = None  # replica: NOT_SERVING while its data are older than this
    # Ray for `segments build --engine ray`: a cluster address; None = RAY_ADDRESS or a
    # local Ray started on first use.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.replica_of is not None and self.publish_to is not None:
            raise ConfigError("replica_of", "a replica does not publish; drop publish_to")
        if self.publish_keep < 1:
            raise ConfigError("publish_keep", "keep at least 1 generation")
        if self.publish_every_s < 0 or self.poll_s <= 0:
            raise ConfigError("publish_every_s", "intervals must be positive (0: on demand)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls", "give both tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca", "mTLS needs tls_cert and tls_key too")


def load_config(path: Path | None = None, **overrides: Any) -> ServerConfig:
    """Build the config from an optional TOML file; keyword overrides win (None = not given)."""
    doc: dict[str, Any] = tomllib.loads(Path(path).read_text()) if path else {}
    server = dict(doc.get("server", {}))
    auth = dict(doc.get("auth", {}))
    if auth.get("tokens"):
        server["tokens"] = tuple((t["sha256"], t["role"]) for t in auth["tokens"])
    for key, value in dict(doc.get("tls", {})).items():
        server[f"tls_{key}"] = value
    engine = dict(doc.get("engine", {}))
    limits = dict(doc.get("limits", {}))
    server_keys = {f.name for f in fields(ServerConfig)} - {"engine"}
    engine_keys = {f.name for f in fields(EngineConfig)} - {"limits"}
    limits_override = overrides.pop("limits", None)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in server_keys:
            server[key] = value
        elif key in engine_keys:
            engine[key] = value
        else:
            raise ConfigError(key, "unknown setting")
    unknown = (
        (set(server) - server_keys)
        | (set(engine) - engine_keys)
        | (set(limits) - {f.name for f in fields(Limits)})
    )
    if unknown:
        raise ConfigError("config", f"unknown settings: {sorted(unknown)}")
    if "attributes" in engine and engine["attributes"] is not None:
        engine["attributes"] = tuple(
            a if isinstance(a, AttributeSpec) else AttributeSpec.parse(a)
            for a in engine["attributes"]
        )
    engine.setdefault("data_dir", "./data")
    engine["limits"] = limits_override or Limits(**limits)
    if "tokens" in server:
        server["tokens"] = tuple(tuple(t) for t in server["tokens"])
    for key in ("port_file", "tls_cert", "tls_key", "tls_client_ca", "publish_to", "replica_of"):
        if server.get(key) is not None:
            server[key] = Path(server[key])
    return ServerConfig(engine=EngineConfig(**engine), **server)
