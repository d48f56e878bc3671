"""The methods named in ``export.recipes.METHODS``: fp32 ONNX file in, converted file out.

Each is a function ``(src, dst, calibration) -> None`` over ONNX files, so one can be run and
tested alone. ONNX Runtime's own converters do the work (its fp16 converter, MatMulNBits
quantiser, dynamic and static quantisers); only the weight-only QDQ rewrite is ours, because
ORT's QDQ weight-only path emits blocked DequantizeLinear (opset 21), which TensorRT 8.6 lacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["FP16_KEEP_FP32_OPS", "apply_method"]

# Ops whose fp16 version loses too much: x^2 and its mean in RMSNorm (overflow past 256),
# LayerNorm statistics, softmax, and the division/ReduceL2 of the final L2 norm and GELU.
FP16_KEEP_FP32_OPS = ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "ReduceL2", "Softmax", "LayerNormalization", "Div")

Feeds = Sequence[dict[str, np.ndarray]]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantisers log every tensor at INFO on the root logger; keep progress readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _save(model: onnx.ModelProto, dst: Path) -> None:
    onnx.save_model(model, str(dst))


def fp32(src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    try:  # the fp32 text graph is over 1 GB: share the bytes when the filesystem allows
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def fp16(src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(src)), keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS), disable_shape_infer=True
    )
    _save(model, dst)


def dynamic_int8(src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # reduce_range: 7-bit weights. AVX2 without VNNI multiplies u8 activations by s8 weights with
    # vpmaddubsw, which sums pairs into int16 and saturates: 255*127*2 overflows, 255*64*2 does not.
    # With 7-bit weights every CPU class (AVX2, AVX-512 VNNI, ARM dot products) computes the same
    # exact integers; without, the same graph gave a worst token of 0.81 on AVX2 and 0.999 on ARM.
    with _quiet():
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
        )


def weight_only_int8(src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True)
        q.process()
    _save(q.model.model, dst)


class _Reader:
    """``CalibrationDataReader`` over a list of feeds."""

    def __init__(self, feeds: Feeds) -> None:
        self._it = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def static_qdq(src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    if not calibration:
        raise ValueError("static QDQ needs calibration feeds")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(
            src,
            dst,
            _Reader(calibration),  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # TensorRT wants symmetric (zero-point 0) activations and weights.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )


def weight_only_qdq(src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    """MatMul(x, W) -> MatMul(x, DequantizeLinear(W_int8, scale[N], 0, axis=1)), per output channel."""
    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    new_nodes = []
    for node in graph.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        w = inits.get(w_name) if w_name else None
        if w is None or len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT or users[w_name] != 1:
            new_nodes.append(node)
            continue
        arr = numpy_helper.to_array(w)
        scale = np.maximum(np.abs(arr).max(axis=0), 1e-12).astype(np.float32) / 127.0
        q = np.clip(np.rint(arr / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(w)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{w_name}_q"),
                numpy_helper.from_array(scale, f"{w_name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{w_name}_zp"),
            ]
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{w_name}_q", f"{w_name}_scale", f"{w_name}_zp"],
                [w_name],
                axis=1,
                name=f"{w_name}_dq",
            )
        )
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _save(model, dst)


_METHODS: dict[str, Callable[[Path, Path, Feeds | None], None]] = {
    "fp32": fp32,
    "fp16": fp16,
    "dynamic-int8": dynamic_int8,
    "weight-only-int8": weight_only_int8,
    "static-qdq": static_qdq,
    "weight-only-qdq": weight_only_qdq,
}


def apply_method(method: str, src: Path, dst: Path, calibration: Feeds | None = None) -> None:
    """Write ``dst`` from the fp32 graph ``src`` with ``method`` (a key of ``recipes.METHODS``)."""
    _METHODS[method](Path(src), Path(dst), calibration)
