#!/usr/bin/env bash
# Run the arm64 Python that jetson/qemu_setup.sh made, as a Cortex-A76 (Raspberry Pi 5) core:
#   jetson/qemu_run.sh DIR ARGS...        (ARGS as for python3: -m runtime selftest ..., -c '...')
# onnxruntime's cpuinfo probe reads /proc/cpuinfo, which qemu-user passes through from the host;
# an x86 file makes it crash, so a private mount namespace shows it an A76's instead (needs root).
# PYTHONPATH gets the aarch64 wheels and this checkout; extend it with COLLFM2_QEMU_PYTHONPATH.
set -euo pipefail
DIR=$(cd "${1:?usage: qemu_run.sh DIR ARGS...}" && pwd)
shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
export QEMU_CPU=cortex-a76
# a host's OPENBLAS_CORETYPE names its own core, not the emulated one: let OpenBLAS probe the A76
unset OPENBLAS_CORETYPE
export PYTHONPATH="$DIR/site:$HERE${COLLFM2_QEMU_PYTHONPATH:+:$COLLFM2_QEMU_PYTHONPATH}"
exec unshare -m bash -c 'mount --bind "$0" /proc/cpuinfo && exec qemu-aarch64 -L "$1" "$1/usr/bin/python3.11" "${@:2}"' \
  "$HERE/jetson/cpuinfo-cortex-a76.txt" "$DIR/arm64" "$@"
