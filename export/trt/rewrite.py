"""Rewrites that let TensorRT 8.x parse the bundle's opset-18 graphs.

TensorRT 8.5 and 8.6 (JetPack 5.1 and 6.0) parse ONNX up to opset 17, and 8.5 has no
LayerNormalization. onnx's version converter has no 18 -> 17 adapter for Split, so the few ops of
our graphs that changed in opset 18 are rewritten here, each to its exact opset-17 form:

* ``Split(num_outputs=n)`` -> ``Split`` with n outputs and no sizes (opset 13-17 splits equally);
* ``ReduceMean/ReduceL2/...(x, axes)`` with constant ``axes`` -> the ``axes`` attribute;
* ``LayerNormalization`` -> ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add (8.5 only).

Anything else that only exists in opset 18 is refused, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["prepare_for_trt"]

_REDUCE = (
    "ReduceMean",
    "ReduceL2",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)  # fmt: skip  (ReduceSum took axes as input already in 13)
_OPSET18_ONLY = ("BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "CenterCropPad", "Col2Im", "GroupNormalization",
                 "Mish", "OptionalHasElement", "OptionalGetElement")  # fmt: skip


def _constants(model: onnx.ModelProto) -> dict[str, Any]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _to_opset17(model: onnx.ModelProto) -> None:
    consts = _constants(model)
    for node in model.graph.node:
        if node.op_type in _OPSET18_ONLY:
            raise ValueError(f"{node.name}: {node.op_type} has no opset-17 form")
        if node.op_type == "Split":
            kept = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(kept)
        elif node.op_type in _REDUCE and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in consts:
                raise ValueError(f"{node.name}: {node.op_type} axes are not constant; cannot move them to an attribute")
            axes = [int(v) for v in consts[node.input[1]].reshape(-1)]
            del node.input[1:]
            # noop_with_empty_axes only matters for empty axes, which a constant list here is not.
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("axes", axes)])
        elif node.op_type == "Resize" and any(a.name in ("antialias", "axes", "keep_aspect_ratio_policy")
                                              for a in node.attribute):  # fmt: skip
            raise ValueError(f"{node.name}: Resize uses opset-18 attributes")
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 17


def _decompose_layernorm(model: onnx.ModelProto) -> None:
    nodes = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        if axis != -1:
            raise ValueError(f"{node.name}: LayerNormalization over axis {axis}; only the last axis is rewritten")
        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        p = f"{node.name or node.output[0]}_ln"
        eps_name = f"{p}_eps"
        model.graph.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), eps_name))
        y = node.output[0]
        nodes += [
            helper.make_node("ReduceMean", [x], [f"{p}_mean"], axes=[-1], keepdims=1, name=f"{p}_mean"),
            helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}_sub"),
            helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_d2"], name=f"{p}_sq"),
            helper.make_node("ReduceMean", [f"{p}_d2"], [f"{p}_var"], axes=[-1], keepdims=1, name=f"{p}_var"),
            helper.make_node("Add", [f"{p}_var", eps_name], [f"{p}_ve"], name=f"{p}_addeps"),
            helper.make_node("Sqrt", [f"{p}_ve"], [f"{p}_std"], name=f"{p}_sqrt"),
            helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_n"], name=f"{p}_div"),
            helper.make_node("Mul", [f"{p}_n", scale], [f"{p}_s" if bias else y], name=f"{p}_scale"),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [f"{p}_s", bias], [y], name=f"{p}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def prepare_for_trt(src: Path, dst_dir: Path, trt_version: str) -> Path:
    """The graph TensorRT ``trt_version`` should parse: ``src`` itself for 10.x and later, else a
    rewritten opset-17 copy in ``dst_dir`` (LayerNormalization decomposed for 8.5)."""
    if int(trt_version.split(".")[0]) >= 10:
        return src
    model = onnx.load(str(src))
    _to_opset17(model)
    if trt_version == "8.5":
        _decompose_layernorm(model)
    onnx.checker.check_model(model)
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / f"{src.stem}.trt{trt_version}.onnx"
    onnx.save_model(model, str(dst))
    return dst
