"""audience.server: the gRPC servicers, the server runner and the `audience` admin CLI.

from audience.server import AudienceServer, load_config
server = AudienceServer(load_config(data_dir="./data", port=0))
port = server.start()      # SERVING once this returns
...
server.stop()
"""

# First, before the servicers import grpc: it picks grpc's socket I/O (audience.client._grpc_io).
import audience.client._grpc_io  # noqa: F401  # isort: skip

from ._app import SERVICE_NAMES, AudienceServer, serve
from ._config import ServerConfig, load_config
from ._errors import STATUS_OF, ErrorMappingInterceptor, status_for

__all__ = [
    "SERVICE_NAMES",
    "STATUS_OF",
    "AudienceServer",
    "ErrorMappingInterceptor",
    "ServerConfig",
    "load_config",
    "serve",
    "status_for",
]
