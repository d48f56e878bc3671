"""FLOPs per stage, counted from the exported ONNX graphs (benchmarks and device estimates).

The vision graph is static but for its batch axis, so ONNX shape inference at batch 1 gives every
MatMul's shapes (2*M*K*N each). The text graph's shapes depend on data, so it is counted per
token from its weight MatMuls and depthwise conv (all run on every token) plus 2*2*S^2*d for each
pair of activation MatMuls (attention scores and values). Every tile costs the same: tiles are
padded to the graph's 1,024 patches.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["stage_flops", "text_flops", "vision_flops", "vision_flops_at"]


def vision_flops_at(path: Path, patches: int) -> float:
    """FLOPs of one tile run at ``patches`` patches (a patch-count bucket)."""
    return vision_flops(path, patches)


def vision_flops(path: Path, patches: int | None = None) -> float:
    """FLOPs of one tile through the vision graph, from ONNX shape inference at batch 1."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    # batch 1; a dynamic patch axis at ``patches`` (default: the maximum, 1,024), tokens at a quarter.
    n = patches or 1024
    sizes = {"patches": n, "tokens": n // 4}
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param:
                value = sizes.get(d.dim_param, 1)
                d.Clear()
                d.dim_value = value
    del model.graph.value_info[:]
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}  # fmt: skip
    shapes |= {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0.0
    for n in model.graph.node:
        if n.op_type == "MatMul":
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            total += 2.0 * float(np.prod(a[:-1])) * a[-1] * b[-1]
    return total


@lru_cache(maxsize=8)
def _text_costs(path: str) -> tuple[float, int, int]:
    """(weight FLOPs per token, number of activation MatMuls, model width) of a text graph."""
    import onnx

    model = onnx.load(path)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    per_token, act_matmuls = 0.0, 0
    for n in model.graph.node:
        if n.op_type == "MatMul":
            if n.input[1] in weights and len(weights[n.input[1]]) == 2:
                k, m = weights[n.input[1]]
                per_token += 2.0 * k * m
            else:
                act_matmuls += 1
        elif n.op_type == "Conv" and n.input[1] in weights:  # depthwise short conv: C x k taps per token
            c, _, k = weights[n.input[1]]
            per_token += 2.0 * c * k
    d = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    return per_token, act_matmuls, d


def text_flops(path: Path, tokens: int) -> float:
    """FLOPs of ``tokens`` through the text graph: weight MatMuls per token + attention."""
    per_token, act_matmuls, d = _text_costs(str(path))
    return per_token * tokens + act_matmuls * 2.0 * tokens * tokens * d


def stage_flops(bundle: Path, names: dict[str, Any], pages: dict[str, Any], processor: Any,
                query_tokens: tuple[int, ...]) -> dict[str, dict[str, float]]:  # fmt: skip
    """{page name: {vision, text}, query_N: {text}} for the bundle's fp32 graphs."""
    fp32 = Path(bundle) / "fp32"
    tile = vision_flops(fp32 / "vision.onnx")
    out: dict[str, dict[str, float]] = {}
    for name in names:
        b = processor.process_images([pages[name]])
        tokens = int(b["attention_mask"].sum())
        out[name] = {"vision": tile * b["pixel_values"].shape[0], "text": text_flops(fp32 / "text.onnx", tokens)}
    for n in query_tokens:
        out[f"query_{n}"] = {"text": text_flops(fp32 / "text.onnx", n + 1)}
    return out
