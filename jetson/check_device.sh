#!/usr/bin/env bash
# One command on a Jetson (inside the JetPack container, see jetson/README.md):
#   jetson/check_device.sh BUNDLE [PROFILE=orin-nano] [PRECISION=fp16]
# builds and validates the engines, benchmarks a page, a query and a search with tegrastats power,
# and writes benchmarks/results/<device>-<jetpack>.json. Pins the clocks for the run when it can.
set -euo pipefail
BUNDLE=${1:?usage: check_device.sh BUNDLE [PROFILE] [PRECISION]}
PROFILE=${2:-orin-nano}
PRECISION=${3:-fp16}
HERE=$(cd "$(dirname "$0")" && pwd)
if command -v jetson_clocks >/dev/null 2>&1; then
  sudo jetson_clocks --store /tmp/collfm2-clocks.conf || true
  sudo jetson_clocks || true
  trap 'sudo jetson_clocks --restore /tmp/collfm2-clocks.conf || true' EXIT
fi
exec python3 "$HERE/check_device.py" --bundle "$BUNDLE" --profile "$PROFILE" --precision "$PRECISION"
