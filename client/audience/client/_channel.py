"""Opening a channel (blocking or asyncio) and the stubs the clients call through."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ._options import ClientOptions
from ._proto import audience_pb2_grpc as pb_grpc
from ._proto import health_pb2_grpc


class Stubs:
    """The four service stubs and the standard health service of one channel.

    Works with a ``grpc.Channel`` or a ``grpc.aio.Channel``: both build the same callables.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.profiles = pb_grpc.ProfilesStub(channel)
        self.lookalike = pb_grpc.LookalikeStub(channel)
        self.segments = pb_grpc.SegmentsStub(channel)
        self.admin = pb_grpc.AdminStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


def open_stubs(options: ClientOptions, grpc_module: ModuleType) -> Stubs:
    """A channel to ``options.target`` through ``grpc`` or ``grpc.aio``: TLS when root
    certificates are configured, plaintext otherwise."""
    credentials = options.credentials()
    if credentials is None:
        channel = grpc_module.insecure_channel(options.target, options=options.channel_options)
    else:
        channel = grpc_module.secure_channel(
            options.target, credentials, options=options.channel_options
        )
    return Stubs(channel)
