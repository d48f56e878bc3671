"""Native TensorRT engine runner: the primary Jetson path (``--backend trt``).

Loads the engines ``python -m export --target trt`` wrote into ``BUNDLE/trt/<profile>-<precision>/``,
checks each engine manifest against the installed TensorRT and the GPU (``trt_manifest``), and
runs them through the tensor-name API (TensorRT >= 8.5) with cuda-python for device memory. Each
runner exposes ``run(None, feeds) -> [output]`` like an ONNX Runtime session, so ``ColLFM2`` drives
both the same way. Nothing here is imported unless ``--backend trt`` is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFilesError, UserError
from .trt_manifest import check_engine, current_compute_capability

__all__ = ["TrtEngine", "load_engines"]


def _imports() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        from cuda import cudart
    except ImportError as exc:
        raise UserError(
            "the trt backend needs TensorRT and cuda-python: on a Jetson they come with JetPack "
            "(python3-libnvinfer) and `pip install cuda-python`"
        ) from exc
    return trt, cudart


def _check(err: Any) -> None:
    code = err[0] if isinstance(err, tuple) else err
    if int(code) != 0:
        raise RuntimeError(f"CUDA error {code}")


class TrtEngine:
    """One deserialized engine with a context; ``run(None, feeds)`` returns ``[output]``."""

    def __init__(self, path: Path) -> None:
        trt, cudart = _imports()
        self._trt, self._cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelFilesError(f"{path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        err, self.stream = cudart.cudaStreamCreate()
        _check(err)

    def _profile_for(self, feeds: dict[str, np.ndarray]) -> int:
        for k in range(self.engine.num_optimization_profiles):
            fits = True
            for name, arr in feeds.items():
                lo, _, hi = self.engine.get_tensor_profile_shape(name, k)
                fits &= all(a <= s <= b for a, s, b in zip(lo, arr.shape, hi, strict=True))
            if fits:
                return k
        shapes = {k: v.shape for k, v in feeds.items()}
        raise UserError(f"input shapes {shapes} are outside every optimisation profile of this engine; "
                        "rebuild with a larger --profile")  # fmt: skip

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        trt, cudart = self._trt, self._cudart
        self.context.set_optimization_profile_async(self._profile_for(feeds), self.stream)
        buffers = []
        try:
            for name in self.inputs:
                dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                host = np.ascontiguousarray(feeds[name], dtype=dtype)  # int64 masks -> int32 on TensorRT 8
                self.context.set_input_shape(name, host.shape)
                err, ptr = cudart.cudaMalloc(max(host.nbytes, 1))
                _check(err)
                buffers.append(ptr)
                _check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))  # fmt: skip
                self.context.set_tensor_address(name, ptr)
            results = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                err, ptr = cudart.cudaMalloc(max(host.nbytes, 1))
                _check(err)
                buffers.append(ptr)
                self.context.set_tensor_address(name, ptr)
                results.append((host, ptr))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execution failed")
            for host, ptr in results:
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))  # fmt: skip
            _check(cudart.cudaStreamSynchronize(self.stream))
            return [np.asarray(h, dtype=np.float32) for h, _ in results]
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)


def load_engines(bundle_dir: Path, engine_dir: str | None = None) -> tuple[dict[str, TrtEngine], dict[str, Any]]:
    """The vision and text engines of ``bundle_dir/trt/<engine_dir>`` (default: the only one)."""
    trt, _ = _imports()
    root = bundle_dir / "trt"
    dirs = sorted(p for p in root.glob("*") if (p / "engines.json").is_file()) if root.is_dir() else []
    if engine_dir:
        dirs = [d for d in dirs if d.name == engine_dir]
    if len(dirs) != 1:
        have = ", ".join(d.name for d in dirs) or "none"
        raise ModelFilesError(f"{root}: need exactly one engine set (have: {have}); build with python -m export "
                              "--target trt, or pick one with engine_dir=")  # fmt: skip
    meta = json.loads((dirs[0] / "engines.json").read_text())
    cc = current_compute_capability()
    engines = {}
    for m in meta["engines"]:
        check_engine(m, trt.__version__, cc)
        engines[m["graph"]] = TrtEngine(dirs[0] / m["file"])
    return engines, meta
