"""Opening channels (blocking or asyncio) and the stubs the clients call through.

Reads (Lookalike, Segments, GetUser, health) go to `target`, spread with gRPC's own
`round_robin` load balancing over every address it names or resolves to; writes (the rest
of Profiles, Admin) go to `primary` when one is given, else to `target` as well.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ._errors import InvalidArgument
from ._options import ClientOptions
from ._proto import audience_pb2_grpc as pb_grpc
from ._proto import health_pb2_grpc

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


class Stubs:
    """The service stubs over a read channel and a write channel (the same one for a single
    server). Works with ``grpc.Channel`` or ``grpc.aio.Channel``: both build the same callables.
    """

    def __init__(self, reads: Any, writes: Any) -> None:
        self.channels = (reads,) if writes is reads else (reads, writes)
        self.profiles = pb_grpc.ProfilesStub(writes)
        self.read_profiles = pb_grpc.ProfilesStub(reads)  # GetUser
        self.lookalike = pb_grpc.LookalikeStub(reads)
        self.segments = pb_grpc.SegmentsStub(reads)
        self.predictions = pb_grpc.PredictionsStub(reads)
        self.admin = pb_grpc.AdminStub(writes)
        self.health = health_pb2_grpc.HealthStub(reads)


def target_uri(target: str | Sequence[str]) -> str:
    """One gRPC target for ``target``: a name as given (``host:port``, ``dns:///name:port``,
    ``ipv4:a:p,b:p``), or a list of ``host:port`` as one ``ipv4:`` / ``ipv6:`` address list
    (host names resolved now; for names that change, give one DNS name instead)."""
    if isinstance(target, str):
        return target
    addresses = list(target)
    if not addresses:
        raise InvalidArgument("target: give at least one host:port")
    resolved: list[tuple[int, str]] = []
    for address in addresses:
        host, sep, port = str(address).rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit():
            raise InvalidArgument(f"target: {address!r} is not host:port")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                raise InvalidArgument(f"target: cannot resolve {host!r} ({exc})") from None
            ip = ipaddress.ip_address(info[0][4][0])
        resolved.append((ip.version, f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"))
    versions = {v for v, _ in resolved}
    if len(versions) > 1:
        raise InvalidArgument("target: mix of IPv4 and IPv6 addresses; use one family")
    return f"ipv{versions.pop()}:" + ",".join(a for _, a in resolved)


def _open(options: ClientOptions, grpc_module: ModuleType, target: str, extra: list) -> Any:
    credentials = options.credentials()
    channel_options = [*options.channel_options, *extra]
    if credentials is None:
        return grpc_module.insecure_channel(target, options=channel_options)
    return grpc_module.secure_channel(target, credentials, options=channel_options)


def open_stubs(options: ClientOptions, grpc_module: ModuleType) -> Stubs:
    """Channels through ``grpc`` or ``grpc.aio``: TLS when root certificates are configured,
    plaintext otherwise."""
    reads = _open(
        options, grpc_module, target_uri(options.target), [("grpc.service_config", ROUND_ROBIN)]
    )
    writes = reads if options.primary is None else _open(options, grpc_module, options.primary, [])
    return Stubs(reads, writes)
