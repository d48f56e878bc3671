"""Precision -> recipe, decided in one place (the onnxruntime-genai builder's habit).

Every precision derives from the one fp32 ONNX export of each graph by a list of candidate
*methods*. The fidelity gate tries them in order per graph and keeps the first that passes
(docs/reference.md §6.8: activation quantisation is the fast path but risky for the SigLIP
tower), else the last one, marked as failing. The manifest records which method each graph got
and why. Method implementations live in ``export.quantize``; nothing here runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from runtime.parity import FP32_GATE, REDUCED_GATE, Gate

__all__ = ["FAKE_QUANT", "GATES", "METHODS", "RECIPES", "Gate", "Precision", "Recipe", "parse_precisions"]


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # ORT CPU (Raspberry Pi, laptops): int8 weights, fp32 or dynamic-int8 activations
    INT8_QDQ = "int8-qdq"  # TensorRT: explicit static QDQ from calibration

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Recipe:
    precision: Precision
    methods: tuple[str, ...]  # candidates in order; the gate keeps the first that passes
    embeddings_dtype: str  # the token table stored beside the graphs
    target: str  # who this precision is for
    gate: Gate
    # ONNX Runtime session settings the runtime applies to these graphs (written to the manifest).
    session_config: tuple[tuple[str, str], ...] = ()


# What each method does (the manifest copies the text next to the method name).
METHODS: dict[str, str] = {
    "fp32": "the exported fp32 graph",
    "fp16": "fp16 weights and activations; RMSNorm/LayerNorm statistics, softmax and the L2 norm kept in fp32",
    "dynamic-int8": "7-bit per-channel weights (reduce_range), activations quantised to uint8 per batch at run time "
    "(ORT dynamic); no CPU's int8 kernel can saturate, so every CPU class computes the same integers",
    "weight-only-int8": "int8 block-wise weights (MatMulNBits, block 32), fp32 activations and arithmetic",
    "static-qdq": "int8 per-channel weights and int8 activations from calibration, explicit QuantizeLinear/"
    "DequantizeLinear pairs (what TensorRT builds int8 engines from)",
    "weight-only-qdq": "int8 per-channel weights as DequantizeLinear, fp32 activations (TensorRT builds the "
    "matmuls in fp16/fp32)",
}

# int8: mean >= 0.995 and worst token >= 0.98 per graph, MaxSim within 2 % (docs/cpu-classes.md).
# The old 0.98 / 0.9 let through dynamic int8 whose AVX2 kernels saturate (worst token 0.81 on
# AVX2, 0.999 on ARM for the same graph).
GATES: dict[Precision, Gate] = {
    Precision.FP32: FP32_GATE,
    Precision.FP16: Gate(min_worst_cos=0.999),
    Precision.INT8: REDUCED_GATE,
    Precision.INT8_QDQ: Gate(min_worst_cos=0.98, min_mean_cos=0.995),
}

# int8-qdq graphs are TensorRT's input. ONNX Runtime would fuse their Q/DQ pairs into its own CPU
# int8 kernels, whose numbers differ between CPU classes; without the fusion it computes the fake
# quantisation in float, as TensorRT's explicit-precision arithmetic does, on any CPU.
FAKE_QUANT = (("session.disable_quant_qdq", "1"),)

RECIPES: dict[Precision, Recipe] = {
    Precision.FP32: Recipe(Precision.FP32, ("fp32",), "float32", "any", GATES[Precision.FP32]),
    Precision.FP16: Recipe(Precision.FP16, ("fp16",), "float16", "GPU (ORT CUDA/TensorRT)", GATES[Precision.FP16]),
    Precision.INT8: Recipe(
        Precision.INT8,
        ("dynamic-int8", "weight-only-int8"),
        "float16",
        "ORT CPU (Raspberry Pi, x86)",
        GATES[Precision.INT8],
    ),
    Precision.INT8_QDQ: Recipe(
        Precision.INT8_QDQ,
        ("static-qdq", "weight-only-qdq"),
        "float16",
        "TensorRT int8",
        GATES[Precision.INT8_QDQ],
        FAKE_QUANT,
    ),
}


def parse_precisions(text: str) -> tuple[Precision, ...]:
    """``"fp32,fp16,int8"`` -> Precisions, in the given order, duplicates dropped."""
    out: list[Precision] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            p = Precision(part)
        except ValueError:
            raise ValueError(
                f"unknown precision {part!r}; choose from {', '.join(p.value for p in Precision)}"
            ) from None
        if p not in out:
            out.append(p)
    if not out:
        raise ValueError("no precision given")
    return tuple(out)
