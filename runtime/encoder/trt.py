"""Native TensorRT engine runner: the primary Jetson path (``--backend trt``).

Loads an engine set that ``python -m export --target trt`` wrote into
``BUNDLE/trt/<profile>-<precision>/``, checks each engine's manifest against the installed
TensorRT and the GPU (``trt_manifest``) and its sha256 against the file, and runs it through the
tensor-name API (TensorRT 8.5 to 11) with cuda-python for device memory. Each engine is a
``Runner`` (``run(feeds) -> [output]``, ``runtime.encoder.runner``), so ``ColLFM2`` drives it as
it drives ONNX Runtime. Nothing here is imported unless ``--engine trt`` is asked for.

cuda-python moved its runtime module: ``cuda.bindings.runtime`` from 12.6 on, and the only one
in 13.x (``from cuda import cudart`` is gone there). ``cuda_runtime`` takes whichever exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import confined_name
from ..bundle.trt_manifest import check_engine
from ..errors import ModelFilesError, UserError
from .runner import Engine, Loaded

__all__ = ["TrtEngine", "compute_capability", "cuda_runtime", "engine_sets", "load", "load_engines"]

CUDA_PYTHON_HINT = (
    "install the cuda-python that matches the device's CUDA major version: JetPack 6 (CUDA 12): "
    "pip install 'cuda-python>=12.6,<13'; JetPack 7 (CUDA 13): pip install 'cuda-python>=13,<14'"
)
# TensorRT DataType name -> numpy (``tensorrt.nptype`` lives in the wrapper package, not the bindings).
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
       "UINT8": np.uint8, "BOOL": np.bool_, "BF16": None}  # fmt: skip


def cuda_runtime() -> Any:
    """cuda-python's runtime API module, whichever path this release has."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python 12.x before 12.6

        return cudart
    except ImportError as exc:
        raise UserError(f"the trt backend needs cuda-python: {CUDA_PYTHON_HINT}") from exc


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(
            "the trt backend needs TensorRT and cuda-python: on a Jetson TensorRT comes with JetPack "
            f"(python3-libnvinfer); {CUDA_PYTHON_HINT}"
        ) from exc
    return trt


def _imports() -> tuple[Any, Any]:
    return _tensorrt(), cuda_runtime()


def _ok(result: Any, what: str) -> Any:
    """cuda-python returns ``(error, *values)``; raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        hint = "; the driver is older than this cuda-python" if "InsufficientDriver" in name else ""
        raise RuntimeError(f"CUDA {what} failed: {name}{hint}")
    return values[0] if len(values) == 1 else (values or None)


def compute_capability(cudart: Any | None = None, device: int = 0) -> str:
    """``"8.7"`` (Orin) etc. from the CUDA runtime; a clear error when it cannot be read."""
    cudart = cudart or cuda_runtime()
    attr = cudart.cudaDeviceAttr
    try:
        major = _ok(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "device query")
        minor = _ok(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "device query")
    except RuntimeError as exc:
        raise UserError(f"cannot read the GPU's compute capability ({exc}); {CUDA_PYTHON_HINT}") from exc
    return f"{major}.{minor}"


def _np_dtype(trt_dtype: Any) -> Any:
    dt = _NP.get(getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1])
    if dt is None:
        raise ModelFilesError(f"engine tensor type {trt_dtype} has no numpy equivalent here")
    return dt


class TrtEngine:
    """One deserialized engine with a context; ``run(None, feeds)`` returns ``[output]``.

    Device buffers are allocated once per tensor and grown only when a larger shape comes; the
    stream and buffers are freed by ``close()`` (also on garbage collection)."""

    def __init__(self, path: Path, sha256: str | None = None) -> None:
        trt, cudart = _imports()
        self._trt, self._cudart = trt, cudart
        self.path = path
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ModelFilesError(f"{path}: sha256 does not match engines.json; the engine was changed, rebuild it")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelFilesError(f"{path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self._dtypes = {n: _np_dtype(self.engine.get_tensor_dtype(n)) for n in self.names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._profile: int | None = None
        self.stream = _ok(cudart.cudaStreamCreate(), "stream creation")

    def _profile_for(self, feeds: dict[str, np.ndarray]) -> int:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise UserError(f"{self.path.name}: missing input(s) {', '.join(missing)}")
        for k in range(self.engine.num_optimization_profiles):
            fits = True
            for name in self.inputs:
                lo, _, hi = self.engine.get_tensor_profile_shape(name, k)
                shape = feeds[name].shape
                fits &= len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
            if fits:
                return k
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        raise UserError(f"input shapes {shapes} are outside every optimisation profile of {self.path.name}; "
                        "rebuild with a larger --profile")  # fmt: skip

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                _ok(self._cudart.cudaFree(ptr), "free")
            ptr = _ok(self._cudart.cudaMalloc(max(nbytes, 1)), "allocation")
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.stream is None:
            raise RuntimeError(f"{self.path.name}: the engine was closed")
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind
        profile = self._profile_for(feeds)
        if profile != self._profile:
            if not self.context.set_optimization_profile_async(profile, self.stream):
                raise RuntimeError(f"{self.path.name}: TensorRT refused optimisation profile {profile}")
            self._profile = profile
        for name in self.inputs:
            host = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])  # int64 -> int32 on TensorRT 8
            if not self.context.set_input_shape(name, host.shape):
                raise UserError(f"{self.path.name}: TensorRT refused shape {host.shape} for {name}")
            ptr = self._device(name, host.nbytes)
            _ok(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind.cudaMemcpyHostToDevice, self.stream),
                "copy to device")  # fmt: skip
            self.context.set_tensor_address(name, ptr)
        results = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=self._dtypes[name])
            self.context.set_tensor_address(name, self._device(name, host.nbytes))
            results.append((name, host))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed")
        for name, host in results:
            _ok(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes,
                                       kind.cudaMemcpyDeviceToHost, self.stream), "copy to host")  # fmt: skip
        _ok(cudart.cudaStreamSynchronize(self.stream), "stream synchronize")
        return [np.asarray(h, dtype=np.float32) if h.dtype != np.float32 else h for _, h in results]

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the CUDA context may already be gone
            self.close()


def engine_sets(bundle_dir: Path) -> list[Path]:
    """The engine directories under ``bundle_dir/trt`` (each with an ``engines.json``)."""
    root = bundle_dir / "trt"
    return sorted(p for p in root.glob("*") if (p / "engines.json").is_file()) if root.is_dir() else []


def load_engines(bundle_dir: Path, engine_dir: str | None = None) -> tuple[dict[str, TrtEngine], dict[str, Any]]:
    """The vision and text engines of ``bundle_dir/trt/<engine_dir>`` (default: the only one).

    Returns the runners and the engine set's ``engines.json`` (with ``dir`` and ``sha256`` added)."""
    trt, cudart = _imports()
    dirs = engine_sets(bundle_dir)
    if engine_dir:
        dirs = [d for d in dirs if d.name == engine_dir]
    if len(dirs) != 1:
        have = ", ".join(d.name for d in engine_sets(bundle_dir)) or "none"
        raise ModelFilesError(f"{bundle_dir / 'trt'}: need exactly one engine set (have: {have}); build with "
                              "python -m export --target trt, or pick one with --precision trt/<set>")  # fmt: skip
    raw = (dirs[0] / "engines.json").read_bytes()
    meta = {**json.loads(raw), "dir": dirs[0].name, "sha256": hashlib.sha256(raw).hexdigest()}
    validation = meta.get("validation")
    if isinstance(validation, dict) and validation.get("passed") is False:
        raise ModelFilesError(f"{dirs[0]}: these engines failed validation against ONNX Runtime; rebuild them")
    cc = compute_capability(cudart)
    engines = {}
    for m in meta["engines"]:
        check_engine(m, str(trt.__version__), cc)
        if not confined_name(m.get("file")) or not (dirs[0] / m["file"]).resolve().is_relative_to(dirs[0].resolve()):
            raise ModelFilesError(f"{dirs[0] / 'engines.json'}: engine file {m.get('file')!r} is not inside its set")
        engines[m["graph"]] = TrtEngine(dirs[0] / m["file"], m.get("sha256"))
    return engines, meta


def load(engine: Engine, bundle: Any, precision: str | None, threads: int | None, providers: Any) -> Loaded:
    """The engines decide what runs: ``precision`` may name an engine set (``trt/<set>@<sha>``, as
    an index records it); the embedding table is that of the graphs the engines were built from."""
    wanted = precision[4:].split("@")[0] if precision and precision.startswith("trt/") else None
    runners, meta = load_engines(bundle.path, wanted)
    entry = bundle.precision(meta.get("source_precision", "fp32"))
    return Loaded(dict(runners), f"trt/{meta['dir']}@{meta['sha256'][:12]}", entry, engines=meta)
