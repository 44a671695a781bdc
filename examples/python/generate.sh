#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs from proto/ into
# examples/python/gen/ (not committed), with protoc and the gRPC plugin that
# grpcio-tools ships: no system protoc, nothing fetched.
#   pip install -r examples/python/requirements.txt
#   examples/python/generate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
rm -rf "$here/gen"
mkdir -p "$here/gen"
"$python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$here/gen" --pyi_out="$here/gen" --grpc_python_out="$here/gen" \
  "$root"/proto/connections/v1/*.proto
