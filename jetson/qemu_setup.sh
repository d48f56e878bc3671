#!/usr/bin/env bash
# Optional aarch64 check without a board: Debian's qemu-user runs an arm64 Python with the
# runtime's aarch64 wheels, and tests/test_jetson_tools.py compares its preprocessing with x86's
# byte for byte. Needs root (apt) and a Debian mirror; takes ~2 minutes to set up.
#
#   sudo jetson/qemu_aarch64_check.sh [ROOT=/tmp/arm64] [SITE=/tmp/arm64site]
#   COLLFM2_QEMU_ROOT=/tmp/arm64 COLLFM2_QEMU_SITE=/tmp/arm64site python -m pytest tests/test_jetson_tools.py
#
# What it cannot do: onnxruntime's aarch64 wheel segfaults on import under qemu-user 7.2 (its
# cpuinfo probe), so model inference on aarch64 still needs a board; the check covers everything
# up to the graphs (decode, resize, tiling, normalisation, tokenisation).
set -euo pipefail
ROOT=${1:-/tmp/arm64}
SITE=${2:-/tmp/arm64site}
HERE=$(cd "$(dirname "$0")/.." && pwd)
apt-get install -y -q qemu-user debootstrap >/dev/null
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  debootstrap --arch=arm64 --variant=minbase --foreign --include=python3 bookworm "$ROOT" http://deb.debian.org/debian
  # --foreign only unpacks the base; unpack the downloaded Python packages too (no second stage needed
  # to run one binary with qemu -L).
  for f in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$f" "$ROOT"; done
fi
python3 -m pip install -q --target "$SITE" --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 -c "$HERE/constraints.txt" \
  numpy tokenizers pillow
qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11" -c "import platform, numpy; print(platform.machine(), numpy.__version__)"
echo "COLLFM2_QEMU_ROOT=$ROOT COLLFM2_QEMU_SITE=$SITE"
