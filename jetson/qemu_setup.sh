#!/usr/bin/env bash
# Emulated CPUs for the tests, without a board: Debian's qemu-user runs
#   * an arm64 Python (Debian bookworm, debootstrapped) with the runtime's aarch64 wheels, as a
#     Raspberry Pi 5 core (Cortex-A76, dot products): tests/test_cpu_classes.py runs the selftest,
#     preprocessing and encode -> index -> search there against x86's answers;
#   * this machine's own x86 Python as an AVX2-only (Haswell) or SSE-only (Nehalem) CPU, the int8
#     kernel classes a VNNI machine cannot otherwise reach.
# Needs root (apt, and jetson/qemu_run.sh's private mount namespace) and a Debian mirror + PyPI.
# Takes about a minute; `make test` runs it when it can (CI does).
#
#   sudo jetson/qemu_setup.sh [DIR=build/qemu]      -> DIR/arm64 (sysroot), DIR/site (wheels)
set -euo pipefail
DIR=${1:-build/qemu}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
ROOT=$DIR/arm64
SITE=$DIR/site
if ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-x86_64 >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get install -y -q qemu-user debootstrap >/dev/null
fi
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  rm -rf "$ROOT"
  echo "qemu_setup: debootstrapping an arm64 Debian with python3 into $ROOT (log: $DIR/debootstrap.log)"
  if ! debootstrap --arch=arm64 --variant=minbase --foreign --include=python3 bookworm "$ROOT" \
      http://deb.debian.org/debian >"$DIR/debootstrap.log" 2>&1; then
    tail -20 "$DIR/debootstrap.log" >&2
    exit 1
  fi
  # --foreign only unpacks the base; unpack the downloaded Python packages too (no second stage is
  # needed to run one binary with qemu -L).
  for f in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$f" "$ROOT"; done
  rm -f "$ROOT"/var/cache/apt/archives/*.deb
fi
# The runtime's own dependencies (pyproject's, pinned by constraints.txt) and the openvino extra
# as aarch64 wheels. Every platform tag: onnxruntime's aarch64 wheels are manylinux_2_28 only,
# openvino's manylinux_2_35 (this Debian has glibc 2.36).
DEPS=$("$PY" - "$HERE/pyproject.toml" <<'PYEOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join(project["dependencies"] + project["optional-dependencies"]["openvino"]))
PYEOF
)
rm -rf "$SITE.tmp"
# shellcheck disable=SC2086
"$PY" -m pip install -q --no-warn-conflicts --target "$SITE.tmp" --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_35_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
  -c "$HERE/constraints.txt" $DEPS
rm -rf "$SITE" && mv "$SITE.tmp" "$SITE"
"$HERE/jetson/qemu_run.sh" "$DIR" -c "import platform, numpy, onnxruntime, openvino; print('qemu-aarch64:', platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__, 'openvino', openvino.__version__)"
touch "$DIR/.ready"
