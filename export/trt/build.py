"""Driving the ``tensorrt`` Python API: parse a graph, build a serialized engine, return its
manifest. The only module that needs TensorRT; the tests run it against a strict fake of each
release's API surface (``export/trt/api/``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.bundle.trt_manifest import ENGINE_SCHEMA_VERSION

from .plan import EngineSpec
from .targets import build_path

__all__ = ["build_engine"]


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            "building engines needs the tensorrt Python package (JetPack's python3-libnvinfer, or pip install tensorrt)"
        ) from exc
    return trt


def build_engine(
    onnx_path: Path,
    spec: EngineSpec,
    out_path: Path,
    workspace_mb: int,
    timing_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Parse ``onnx_path``, build a serialized engine at ``out_path``, return its manifest.

    The installed TensorRT decides the build path (``build_path``): weakly typed 8.x sets the
    precision flags and pins layers; strongly typed 10.x/11.x takes the graph's own types and
    touches none of the weak-typing API (11.0 removed it)."""
    trt = _tensorrt()
    version = str(trt.__version__)
    path = build_path(version)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    nf = trt.NetworkDefinitionCreationFlag
    # 8.x defaults to implicit batch; 10.x is always explicit (and 11 removed the flag).
    flags = 1 << int(nf.STRONGLY_TYPED) if path.strongly_typed else 1 << int(nf.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    pinned = 0
    if not path.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        if spec.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes
        if spec.fp32_layer_ops:
            # Normalisations stay fp32 (fp16 overflows x^2 past 256): pin those layers and make TensorRT obey.
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            keep = (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if any(op.lower() in layer.name.lower() for op in spec.fp32_layer_ops) or layer.type in keep:
                    layer.precision = trt.float32
                    pinned += 1
    for prof in spec.profiles:
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in prof.items():
            p.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(p)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    log(f"building {spec.graph} ({spec.precision}, TensorRT {version} {path.name}, from {spec.onnx}, "
        f"{len(spec.profiles)} profile(s){f', {pinned} layers pinned to fp32' if pinned else ''}) ...")  # fmt: skip
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {spec.graph}; see the log above")
    data = bytes(serialized)
    out_path.write_bytes(data)
    if cache is not None and timing_cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
    return {
        "schema_version": ENGINE_SCHEMA_VERSION,
        "graph": spec.graph,
        "file": out_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "tensorrt_version": version,
        "build_path": path.name,
        "compute_capability": _compute_capability(),
        "precision": spec.precision,
        "profiles": spec.profiles,
        "onnx": spec.onnx,
        "onnx_sha256": spec.onnx_sha256,
        "source_precision": spec.source_precision,
        "fp32_layers": pinned,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _compute_capability() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "{}.{}".format(*torch.cuda.get_device_capability())
    except ImportError:
        pass
    from runtime.encoder.trt import compute_capability

    return compute_capability()
