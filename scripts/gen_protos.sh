#!/usr/bin/env bash
# Regenerate the Python stubs in client/audience/client/_proto from protos/.
# The output is committed so that `pip install ./client` needs only grpcio and protobuf.
# Run after editing protos/audience/v1/*.proto:  bash scripts/gen_protos.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-"$root/.venv/bin/python"}
out="$root/client/audience/client/_proto"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PATH="$(dirname "$py"):$PATH" "$py" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$tmp" --grpc_python_out="$tmp" --mypy_out="$tmp" \
  "$root"/protos/audience/v1/*.proto
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
for f in "$tmp"/audience/v1/*; do
  # Package-relative imports: the stubs live in audience.client._proto, not audience.v1.
  sed -E 's/^from audience\.v1 import ([a-z_0-9]+_pb2)/from . import \1/' "$f" > "$out/$(basename "$f")"
done
echo "generated: $(ls "$out" | tr '\n' ' ')"
