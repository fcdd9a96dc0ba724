"""audience.server: the gRPC servicers, the server runner and the `audience` admin CLI.

    from audience.server import AudienceServer, load_config
    server = AudienceServer(load_config(data_dir="./data", port=0))
    port = server.start()      # SERVING once this returns
    ...
    server.stop()

Names load on first use (PEP 562): importing this package loads neither grpc nor the engine,
so `audience serve` can apply its process settings (grpc's socket I/O is chosen when grpc
first loads) before anything imports grpc. Importing changes no process-wide setting.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SERVICE_NAMES": "._app",
    "AudienceServer": "._app",
    "serve": "._app",
    "ServerConfig": "._config",
    "load_config": "._config",
    "STATUS_OF": "._errors",
    "ErrorMappingInterceptor": "._errors",
    "status_for": "._errors",
    "ProcessSettings": "._process",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from ._app import SERVICE_NAMES, AudienceServer, serve
    from ._config import ServerConfig, load_config
    from ._errors import STATUS_OF, ErrorMappingInterceptor, status_for
    from ._process import ProcessSettings
