#!/usr/bin/env bash
# Build TensorRT engines on the device from a bundle exported on a workstation.
#
#   jetson/build_engines.sh BUNDLE_DIR [PROFILE] [PRECISION]
#     PROFILE:   orin-nano (default) | orin-nx | agx-orin | desktop
#     PRECISION: fp16 (default) | int8 (needs the bundle's int8-qdq graphs)
#
# Runs the pre-flight first (no engine is built if the parser would refuse a graph), pins the
# clocks so build-time kernel timing is stable, and keeps a timing cache next to the bundle so a
# rebuild takes minutes instead of tens of minutes.
set -euo pipefail
BUNDLE=${1:?usage: build_engines.sh BUNDLE_DIR [PROFILE] [PRECISION]}
PROFILE=${2:-orin-nano}
PRECISION=${3:-fp16}
PY=${PYTHON:-python3}

if command -v jetson_clocks >/dev/null 2>&1; then
  echo "[build] max clocks for stable kernel timing (sudo jetson_clocks; restore with --restore)"
  sudo jetson_clocks --store /tmp/collfm2-clocks.conf || true
  sudo jetson_clocks || true
fi
trap '[ -f /tmp/collfm2-clocks.conf ] && sudo jetson_clocks --restore /tmp/collfm2-clocks.conf || true' EXIT

"$PY" -m export --target trt --bundle "$BUNDLE" --profile "$PROFILE" --precision "$PRECISION" \
  --trt-version "$("$PY" -c 'import tensorrt as t; from export.trt import release_for; print(release_for(t.__version__))')" \
  --dry-run
"$PY" -m export --target trt --bundle "$BUNDLE" --profile "$PROFILE" --precision "$PRECISION" \
  --timing-cache "$BUNDLE/trt/timing.cache"
echo "[build] engines in $BUNDLE/trt/$PROFILE-$PRECISION/"
