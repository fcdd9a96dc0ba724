"""Building and running the gRPC server.

`AudienceServer(config).start()` binds (port 0 = a free port), starts answering at once with
health NOT_SERVING, loads the engine, then turns SERVING. `serve(config)` runs one until
SIGTERM / SIGINT, then drains in-flight calls for `grace_seconds` and saves the index.
`audience serve` applies its process settings first (_process.py); importing this module, or
building a server in a test or another program, changes no process-wide setting.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from audience.client._proto import audience_pb2 as pb
from audience.client._proto import audience_pb2_grpc as pb_grpc
from audience.index import Engine, PreconditionFailed, TextEmbedder

from ._auth import AuthInterceptor
from ._config import ServerConfig
from ._errors import ErrorMappingInterceptor
from ._replication import Publisher, ReplicaFollower
from ._servicers import (
    AdminServicer,
    EngineHolder,
    LookalikeServicer,
    PredictionsServicer,
    ProfilesServicer,
    ProgressLog,
    SegmentsServicer,
)

log = logging.getLogger("audience.server")

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in ("Profiles", "Lookalike", "Segments", "Predictions", "Admin")
)


class AudienceServer:
    def __init__(self, config: ServerConfig, *, embedder: TextEmbedder | None = None) -> None:
        self.config = config
        self._embedder = embedder
        self.holder = EngineHolder()
        self.holder.ray_address = config.ray_address
        self.health = health.HealthServicer()
        interceptors: list[grpc.ServerInterceptor] = []
        self._registry, self._metrics, self.metrics_port = None, None, 0
        if config.metrics_port is not None:  # outermost: refused calls are counted too
            from ._metrics import EngineCollector, MetricsInterceptor, RpcMetrics, registry

            self._registry = registry()
            self._registry.register(EngineCollector(lambda: self.holder.engine))
            interceptors.append(MetricsInterceptor(RpcMetrics(self._registry)))
        if config.tokens:
            interceptors.append(AuthInterceptor(dict(config.tokens)))
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
            interceptors=[*interceptors, ErrorMappingInterceptor()],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                # A port in use is an error, not shared (grpc's default on Linux shares it).
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        pb_grpc.add_ProfilesServicer_to_server(ProfilesServicer(self.holder), self._server)
        pb_grpc.add_LookalikeServicer_to_server(LookalikeServicer(self.holder), self._server)
        pb_grpc.add_SegmentsServicer_to_server(SegmentsServicer(self.holder), self._server)
        pb_grpc.add_PredictionsServicer_to_server(PredictionsServicer(self.holder), self._server)
        pb_grpc.add_AdminServicer_to_server(AdminServicer(self.holder), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self._publisher: Publisher | None = None
        self._follower: ReplicaFollower | None = None

    def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def start(self) -> int:
        """Bind, start, load the engine; returns the port once SERVING."""
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.config.tls_cert is not None:
                self.port = self._server.add_secure_port(address, self._credentials())
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise PreconditionFailed(f"cannot listen on {address}: {exc}") from exc
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._registry is not None and self.config.metrics_port is not None:
            from ._metrics import MetricsEndpoint

            c = self.config
            self._metrics = MetricsEndpoint(self._registry, c.metrics_host, c.metrics_port)
            self.metrics_port = self._metrics.port
        self._server.start()
        log.info(
            "Server - listening on %s:%d (%s, auth %s; NOT_SERVING while loading)",
            self.config.host,
            self.port,
            "TLS" if self.config.tls_cert else "plaintext",
            "on" if self.config.tokens else "off",
        )
        if self.config.port_file:
            _write_port_file(self.config.port_file, self.port)
        if self.config.replica_of is not None:
            try:
                self._follow(self.config.replica_of)  # SERVING once a generation is loaded
            except BaseException:
                self._server.stop(0)
                raise
            return self.port
        try:
            engine = Engine.open(
                self.config.engine, embedder=self._embedder, progress=ProgressLog()
            )
        except BaseException:
            self._server.stop(0)
            raise
        self.holder.set(engine)
        if self.config.publish_to is not None:
            c = self.config
            self._publisher = Publisher(
                lambda: self.holder.engine, c.publish_to, c.publish_every_s, c.publish_keep
            )
            self.holder.publisher = self._publisher
            self.holder.replication = self._publisher.state.to_pb
            self._publisher.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("Server - SERVING")
        return self.port

    def _follow(self, source: Path) -> None:
        """Serve as a read replica of the generations published to `source`."""
        c = self.config
        primary = f" ({c.primary})" if c.primary else ""
        self.holder.read_only = (
            f"this server is a read replica of {source}; send writes to the primary{primary}"
        )

        def serve(engine: Engine) -> Engine | None:
            return self.holder.set(engine)

        def health(fresh: bool) -> None:
            status = health_pb2.HealthCheckResponse
            self._set_health(status.SERVING if fresh else status.NOT_SERVING)

        self._follower = ReplicaFollower(
            source, c.engine.data_dir, c.engine, serve, poll_s=c.poll_s, primary=c.primary,
            max_lag_s=c.max_lag_s, on_health=health,
        )  # fmt: skip
        self.holder.replication = lambda: self._follower.state.to_pb()
        self._follower.start()
        log.info("Server - replica of %s; NOT_SERVING until a generation is loaded", source)

    def _credentials(self) -> grpc.ServerCredentials:
        c = self.config
        assert c.tls_cert is not None and c.tls_key is not None
        client_ca = c.tls_client_ca.read_bytes() if c.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(c.tls_key.read_bytes(), c.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    @property
    def engine(self) -> Engine:
        return self.holder.engine

    def cancel_calls(self) -> None:
        """Cancel every call in flight now (a stop's grace period ends)."""
        self._server.stop(0)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish, then save and close the engine."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.stop(self.config.grace_seconds if grace is None else grace).wait()
        for part in (self._publisher, self._follower):
            if part is not None:
                part.stop()
        engine = self.holder.take()
        if engine is not None:
            engine.close()
        if self._metrics is not None:
            self._metrics.stop()
        log.info("Server - stopped")


def _write_port_file(path: Path, port: int) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT (it installs handlers for both: a program's main loop).

    The first signal drains in-flight calls for `grace_seconds`, then saves and closes; a
    second one cancels what is still in flight and ends the process within the grace period
    (an index generation not saved then is replayed from the store at the next start). The
    handlers only put the signal in a queue: nothing that takes a lock runs inside them."""
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()  # put() is safe in a handler
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.put(signum))
    server = AudienceServer(config)
    server.start()
    signals.get()
    log.info("Server - shutting down (grace %.0fs)", config.grace_seconds)
    stopping = threading.Thread(target=server.stop, name="shutdown", daemon=True)
    stopping.start()
    while stopping.is_alive():
        try:
            signals.get(timeout=0.1)
        except queue.Empty:
            continue
        log.warning("Server - second signal: cancelling the calls in flight")
        server.cancel_calls()
        stopping.join(config.grace_seconds)
        return
    stopping.join()
