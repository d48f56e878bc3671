"""What the machine gives, measured now: the CPU (``runtime.cpu``), library versions, the fp32 and
int8 GEMM peaks, read and copy bandwidth. Every benchmark figure is read against these, taken in
the same run."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.timing import timeit


def machine(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    from runtime.cpu import cpu_host

    host = cpu_host()
    return {
        **host,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _ort_matmul(threads: int, n: int, a_type: int, b_type: int, op: str) -> Any:
    from onnx import TensorProto, helper

    from runtime.sessions import ort_session

    out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    g = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", a_type, [n, n]),
                           helper.make_tensor_value_info("b", b_type, [n, n])],
                          [helper.make_tensor_value_info("c", out_type, [n, n])])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return ort_session(m.SerializeToString(), threads)


def gemm_peaks(threads: int) -> dict[str, float]:
    """fp32 GEMM GFLOP/s (the best of ORT's MLAS and torch's BLAS over two sizes) and int8 GEMM
    GOP/s (ORT MatMulInteger, u8 x s8), measured now, in this process."""
    import torch
    from onnx import TensorProto

    def rate(n: int, fn: Callable[[], Any]) -> float:  # G(FL)OP/s of an n x n x n product
        return 2 * n**3 / (timeit(fn, 1, 3)["p50_ms"] / 1e3) / 1e9

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for n in (2048, 4096):
        a = rng.standard_normal((n, n)).astype(np.float32)
        s = _ort_matmul(threads, n, TensorProto.FLOAT, TensorProto.FLOAT, "MatMul")
        out[f"ort_fp32_{n}"] = rate(n, lambda s=s, a=a: s.run(None, {"a": a, "b": a}))
        t = torch.from_numpy(a)
        out[f"torch_fp32_{n}"] = rate(n, lambda t=t: t @ t)
    n = 2048
    s8 = _ort_matmul(threads, n, TensorProto.UINT8, TensorProto.INT8, "MatMulInteger")
    a8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b8 = rng.integers(-127, 127, (n, n), dtype=np.int8)
    out["ort_int8_2048"] = rate(n, lambda: s8.run(None, {"a": a8, "b": b8}))
    out["fp32"] = max(v for k, v in out.items() if "fp32" in k)
    out["int8"] = out["ort_int8_2048"]
    return out


def read_bandwidth(threads: int) -> float:
    """GB/s of a pure read stream: ORT's ReduceMax over 512 MB on ``threads`` threads. A query
    reads its weights and writes almost nothing, so its floor uses this, not the copy."""
    from onnx import TensorProto, helper

    from runtime.sessions import ort_session

    n = 1 << 27
    g = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["y"], keepdims=0)], "read",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    s = ort_session(m.SerializeToString(), threads)
    x = np.ones(n, np.float32)
    t = timeit(lambda: s.run(None, {"x": x}), 1, 5)
    return x.nbytes / (t["p50_ms"] / 1e3) / 1e9


def copy_bandwidth() -> float:
    a = np.ones(1 << 25, np.float32)  # 128 MB
    b = np.empty_like(a)
    t = timeit(lambda: np.copyto(b, a), 1, 5)
    return 2 * a.nbytes / (t["p50_ms"] / 1e3) / 1e9


# ---------------------------------------------------------------------------------------------
