"""Pre-flight without TensorRT: each ONNX graph against what the release's ONNX parser supports
(``ops.json``: onnx-tensorrt's operator matrices for TensorRT 8.5, 8.6 and 10.1), the opset it
takes, and the shapes the profiles ask for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .plan import Problem
from .targets import MAX_OPSET, TRT_VERSIONS

__all__ = ["preflight"]

_OPS = json.loads((Path(__file__).parent / "ops.json").read_text(encoding="utf-8"))
_ONNX_TO_TRT_TYPE = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}


def _const_names(model: Any) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def preflight(
    path: Path, graph: str, trt_version: str, profiles: list[dict[str, list[list[int]]]] | None = None
) -> list[Problem]:
    """Problems TensorRT ``trt_version``'s ONNX parser would hit on ``path``, each with its node."""
    import onnx

    if trt_version not in TRT_VERSIONS:
        raise ValueError(f"unknown TensorRT version {trt_version!r}; known: {', '.join(TRT_VERSIONS)}")
    ops = _OPS[TRT_VERSIONS[trt_version].table]
    model = onnx.load(str(path))
    problems: list[Problem] = []
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > MAX_OPSET[trt_version]:
        problems.append(Problem("error", graph, "", "", f"opset {opset} > {MAX_OPSET[trt_version]}, the newest "
                                f"TensorRT {trt_version} parses"))  # fmt: skip
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference is a help for dtype checks, not a requirement
        inferred = model
    dtypes = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output)}  # fmt: skip
    dtypes |= {t.name: t.data_type for t in model.graph.initializer}
    consts = _const_names(model)
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            problems.append(Problem("error", graph, name, node.op_type, f"custom domain {node.domain!r} (ORT-only op)"))
            continue
        row = ops.get(node.op_type)
        if row is None or not row[0]:
            problems.append(Problem("error", graph, name, node.op_type, f"not supported by TensorRT {trt_version}"))
            continue
        types = row[1]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize" and attrs.get("antialias", 0):
            problems.append(Problem("error", graph, name, node.op_type, "antialias=1 is not supported"))
        axes = _axes_input(node)
        if axes and axes not in consts:
            problems.append(Problem("error", graph, name, node.op_type, "`axes` must be a constant"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = _initializer(model, node.input[2])
            if zp is not None and np.any(zp != 0):
                problems.append(Problem("error", graph, name, node.op_type, "zero point must be 0 (symmetric)"))
        dt = _ONNX_TO_TRT_TYPE.get(dtypes.get(node.input[0] if node.input else "", 0))
        int64_ok = dt == "INT64" and "INT32" in types  # TensorRT casts int64 down where it can
        if types and dt and dt not in types and not int64_ok and node.op_type not in ("Cast", "Shape", "Constant"):
            problems.append(Problem("error", graph, name, node.op_type, f"input type {dt} not in {types}"))
    for inp in model.graph.input:
        dt = _ONNX_TO_TRT_TYPE.get(inp.type.tensor_type.elem_type)
        if dt == "INT64" and "INT64" not in ops.get("Cast", [False, []])[1]:
            problems.append(Problem("warning", graph, inp.name, "input",
                                    f"int64 input: TensorRT {trt_version} casts it to int32; feed int32"))  # fmt: skip
        if profiles:
            dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
            for k, prof in enumerate(profiles):
                if inp.name not in prof:
                    problems.append(Problem("error", graph, inp.name, "input", f"profile {k} gives no shapes"))
                    continue
                for shape in prof[inp.name]:
                    fixed_ok = len(shape) == len(dims) and all(
                        not isinstance(d, int) or not d or d == n for d, n in zip(dims, shape, strict=True)
                    )
                    if not fixed_ok:
                        msg = f"profile {k} shape {shape} does not fit the graph's {dims}"
                        problems.append(Problem("error", graph, inp.name, "input", msg))
    return problems


def _axes_input(node: Any) -> str:
    """The name of a node's ``axes`` input (opset >= 13/18 moved axes from attribute to input)."""
    if node.op_type == "Slice":
        return node.input[3] if len(node.input) > 3 else ""
    if node.op_type in ("Squeeze", "Unsqueeze", "ReduceMean", "ReduceL2", "ReduceSum", "ReduceMax"):
        return node.input[1] if len(node.input) > 1 else ""
    return ""


def _initializer(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None
