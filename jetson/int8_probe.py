"""What this CPU's int8 kernels compute, as JSON: the bundle's selftest plus a saturation probe.

    python jetson/int8_probe.py PROBE_DIR [BUNDLE]

PROBE_DIR holds two small graphs; a run with the ``onnx`` package (the export extra) writes them
there if they are missing, so make them once on the workstation and copy the folder along.

The probe runs ONNX Runtime's ``MatMulInteger`` (u8 activations x s8 weights) on the worst case
for 8-bit weights (255 x 127: every pair sum overflows int16) and for the 7-bit weights the
``int8`` recipe uses (255 x -64), and reports each result's error against exact integer
arithmetic. Measured (docs/cpu-classes.md): AVX2's ``vpmaddubsw`` clips the first and not the
second; the SSE4.1 kernel, aarch64 ``sdot``/``udot`` and VNNI's ``vpdpbusd`` (under Bochs,
``jetson/bochs_vnni.py``) clip neither. So the probe shows which kernel class really ran, and the
selftest shows the recipe's answers there. Runtime dependencies only (numpy, onnxruntime), so it
runs under emulators (``qemu-x86_64 -cpu ...``, ``jetson/qemu_run.sh``, ``jetson/bochs_vnni.py``).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

K, N = 256, 16
CASES = {"w8": 127, "w7": -64}  # reduce_range quantises weights to [-64, 64]


def write_probe_models(folder: Path) -> Path:
    """One ``MatMulInteger`` graph per case (needs the ``onnx`` package: run it on the host)."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    for name, w in CASES.items():
        b = helper.make_tensor("B", TensorProto.INT8, [K, N], np.full((K, N), w, np.int8).tobytes(), raw=True)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
            f"probe_{name}",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, K])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, N])],
            [b],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, folder / f"{name}.onnx")
    return folder


def probe(folder: Path) -> dict[str, float]:
    """Relative error of each case's int32 result against exact integers (0.0: exact)."""
    from runtime.sessions import ort_session

    out = {}
    a = np.full((4, K), 255, np.uint8)
    for name, w in CASES.items():
        sess = ort_session(folder / f"{name}.onnx", threads=1)
        got = sess.run(None, {"A": a})[0].astype(np.int64)
        exact = K * 255 * w
        out[name] = float(np.abs(got - exact).max() / abs(exact))
    return out


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from runtime.cpu import cpu_class, cpu_features
    from runtime.encoder.selftest import selftest

    if not argv or len(argv) > 2:
        print("usage: int8_probe.py PROBE_DIR [BUNDLE]", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if not all((folder / f"{name}.onnx").is_file() for name in CASES):
        try:
            write_probe_models(folder)
        except ImportError:
            msg = "run it once where the export extra is installed, then copy the folder"
            print(f"int8_probe: no probe graphs in {folder} and no onnx package to write them ({msg})", file=sys.stderr)
            return 2
    feats = cpu_features()
    report = {
        "machine": platform.machine(),
        "cpu_class": cpu_class(),
        "features": sorted(f for f in feats if f in ("AVX2", "AVX512F", "AVX512VNNI", "AVXVNNI", "ASIMDDP")),
        "saturation": probe(folder),
    }
    if len(argv) == 2:
        report["selftest"] = selftest(Path(argv[1]), ["fp32", "int8"], "ort-cpu", 1)
    print(json.dumps(report, indent=1, default=float))
    return 0 if report.get("selftest", {"passed": True})["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
