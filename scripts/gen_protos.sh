#!/usr/bin/env bash
# Regenerate the Python stubs in client/audience/client/_proto from protos/.
# The output is committed so that `pip install ./client` needs only grpcio and protobuf.
# Run after editing protos/**/*.proto:  bash scripts/gen_protos.sh  (or make protos)
#
# audience/v1/*.proto     the API
# grpc/health/v1/*.proto  the standard health check, for the client's wait_ready; built into
#                         a private descriptor pool, so it never clashes with the
#                         grpcio-health-checking package's copy in the same process
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-"$root/.venv/bin/python"}
out="$root/client/audience/client/_proto"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PATH="$(dirname "$py"):$PATH" "$py" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$tmp" --grpc_python_out="$tmp" --mypy_out="$tmp" \
  "$root"/protos/audience/v1/*.proto "$root"/protos/grpc/health/v1/*.proto
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
for f in "$tmp"/audience/v1/* "$tmp"/grpc/health/v1/*; do
  # Package-relative imports: the stubs live in audience.client._proto.
  sed -E 's/^from (audience\.v1|grpc\.health\.v1) import ([a-z_0-9]+_pb2)/from . import \2/' \
    "$f" > "$out/$(basename "$f")"
done
sed -i 's/_descriptor_pool\.Default()/_descriptor_pool.DescriptorPool()/' "$out/health_pb2.py"
echo "generated: $(ls "$out" | tr '\n' ' ')"
