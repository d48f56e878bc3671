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
selftest shows the recipe's answers there (OpenVINO's too, as ``selftest_ov``, where it is
installed). ``candidates`` does the same for the search's candidate kernel
(``runtime.scoring.score_codes``): its error against exact integers with the query codes it uses
(+-64) and with 8-bit ones, and a hash of its scores, which must be every CPU's. Runtime
dependencies only (numpy, onnxruntime, and openvino if present), so it runs under emulators (``qemu-x86_64 -cpu ...``,
``jetson/qemu_run.sh``, ``jetson/bochs_vnni.py``).
"""

from __future__ import annotations

import importlib.util
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


def candidate_inputs() -> tuple:
    """The candidate kernel's worst case: row codes at 0/255 and queries whose codes hit the limit,
    over a block of equal documents (the ``run`` graph) and one of mixed lengths (``pieces``)."""
    from runtime import scoring

    rng = np.random.default_rng(0)
    codes = rng.choice(np.array([0, 1, 127, 128, 254, 255], np.uint8), size=(2048, 128))
    queries = [np.where(rng.random((20, 128)) < 0.5, -1.0, 1.0).astype(np.float32) for _ in range(2)]
    lengths = [16] * 64 + [40] * 20 + [1] * 24 + [200]
    layout = scoring.CodeLayout.build(np.cumsum([0, *lengths]), block_rows=1024)
    return queries, codes, np.full(len(lengths), 1 / 127, np.float32), layout


def candidates() -> dict[str, float | str]:
    """The candidate kernel's graph against exact integers, for query codes within +-64 (what it
    uses) and +-127, and the sha256 of ``score_codes`` on ``candidate_inputs`` (the same on every
    CPU, or a bug)."""
    import hashlib

    from runtime import scoring

    queries, codes, scale, layout = candidate_inputs()
    pieces = np.arange(len(codes), dtype=np.int32)[:, None]  # each row alone: the plain dot products
    sess = scoring._session("pieces", 1)
    rng = np.random.default_rng(1)
    out: dict[str, float | str] = {}
    for name, top in (("q7", scoring.QUERY_CODE_MAX), ("q8", 127)):
        q = np.where(rng.random((128, N)) < 0.5, -top, top).astype(np.int8)
        exact = (codes.astype(np.int64) - scoring.ROW_ZERO) @ q.astype(np.int64)
        got = sess.run(None, {"codes": codes, "queries_t": q, "pieces": pieces})[0]
        out[name] = float(np.abs(got - exact).max() / np.abs(exact).max())
    got = scoring.score_codes(queries, codes, scale, layout, threads=1)
    out["sha256"] = hashlib.sha256(got.tobytes()).hexdigest()
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
        "candidates": candidates(),
    }
    if len(argv) == 2:
        report["selftest"] = selftest(Path(argv[1]), ["fp32", "int8"], "ort-cpu", 1)
        if importlib.util.find_spec("openvino") is not None:  # its own VNNI/AVX2 kernels, same recipe
            report["selftest_ov"] = selftest(Path(argv[1]), ["fp32", "int8"], "ov-cpu", 1)
    print(json.dumps(report, indent=1, default=float))
    return 0 if all(report.get(k, {"passed": True})["passed"] for k in ("selftest", "selftest_ov")) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
