"""Strict fakes of TensorRT and cuda-python, one per release, built from the API surfaces that
``export/trt/api/dump_api.py`` read out of the official bindings wheels.

Strict means: a class, method, attribute or enum value that the release does not have raises
``AttributeError``, as the real bindings do (``BuilderFlag.FP16`` on 11.4, ``from cuda import
cudart`` on 13.x). What the fakes do behind the surface is small and honest: the builder records
its calls and serialises a "plan" naming the ONNX file it parsed and the profiles it was given;
the runtime deserialises that plan into an engine that runs the ONNX file with ONNX Runtime, on
"device memory" that is host memory handed out by the fake ``cudaMalloc``.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

API = Path(__file__).resolve().parents[1] / "export" / "trt" / "api"
TRT_RELEASES = ("8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")
CUDA_RELEASES = ("12.6.2.post1", "13.0.3")


def _surface(kind: str, release: str) -> dict:
    return json.loads((API / f"{kind}-{release}.json").read_text())


class _Value:
    """An enum value: ``int()``-able, hashable, named."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Value) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return f"<{self.enum}.{self.name}: {self.value}>"


def _enum(name: str, members: list[str]) -> type:
    return type(name, (), {m: _Value(name, m, i) for i, m in enumerate(members)})


class _Strict:
    """Instances answer only to their release's member names (and the fake's own _private ones)."""

    _allowed: frozenset[str] = frozenset()
    _release = ""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in type(self)._allowed:
            raise AttributeError(f"'{type(self).__name__}' has no attribute '{name}' in TensorRT {type(self)._release}")
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self)._allowed:
            raise AttributeError(f"'{type(self).__name__}' has no attribute '{name}' in TensorRT {type(self)._release}")
        object.__setattr__(self, name, value)


# ONNX op -> the TensorRT layer type the parser would make (the ones the builder looks at).
_LAYER_TYPES = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "ReduceMean": "REDUCE",
                "ReduceL2": "REDUCE", "ReduceMax": "REDUCE", "ReduceSum": "REDUCE"}  # fmt: skip


def make_tensorrt(release: str, calls: list) -> types.ModuleType:
    """A fake ``tensorrt`` module for ``release``; every builder call is appended to ``calls``."""
    api = _surface("tensorrt", release)["api"]
    mod = types.ModuleType("tensorrt")
    mod.__version__ = release
    enums = {n: _enum(n, e["members"]) for n, e in api.items() if e["kind"] == "enum"}
    for n, e in enums.items():
        setattr(mod, n, e)
    dtype = enums["DataType"]

    def cls(name: str, body: dict) -> type:
        members = frozenset(api[name]["members"]) if name in api else frozenset()
        return type(name, (_Strict,), {"_allowed": members, "_release": release, **body})

    def flag_names(enum: type, bits: int) -> list[str]:
        return [m for m in dir(enum) if not m.startswith("_") and bits & (1 << int(getattr(enum, m)))]

    levels = [m for m in api["Logger"]["members"] if m.isupper()]
    severity_enum = _enum("Severity", levels)
    Logger = cls("Logger", {"__init__": lambda self, sev=None: None, "Severity": severity_enum,
                            **{m: getattr(severity_enum, m) for m in levels}})  # fmt: skip

    class _LayerImpl:
        def __init__(self, name: str, op: str) -> None:
            self._name, self._precision = name, None
            self._type = getattr(enums["LayerType"], _LAYER_TYPES.get(op, "SHUFFLE"))

        name = property(lambda self: self._name)
        type = property(lambda self: self._type)

        def _set_precision(self, value: Any) -> None:
            calls.append(("layer.precision", self._name, value.name))
            self._precision = value

        precision = property(lambda self: self._precision, _set_precision)

    Layer = cls("ILayer", {k: v for k, v in vars(_LayerImpl).items() if not k.startswith("__") or k == "__init__"})

    def net_init(self, flags: int) -> None:
        self._flags, self._layers, self._onnx = flags, [], None

    Network = cls("INetworkDefinition", {
        "__init__": net_init,
        "num_layers": property(lambda self: len(self._layers)),
        "get_layer": lambda self, i: self._layers[i],
    })  # fmt: skip

    def parse_from_file(self, path: str) -> bool:
        import onnx

        calls.append(("parse_from_file", path))
        model = onnx.load(path, load_external_data=False)
        self._net._onnx = path
        self._net._layers = [Layer(n.name or n.output[0], n.op_type) for n in model.graph.node]
        return True

    OnnxParser = cls("OnnxParser", {"__init__": lambda self, net, logger: object.__setattr__(self, "_net", net),
                                    "parse_from_file": parse_from_file, "num_errors": property(lambda self: 0),
                                    "get_error": lambda self, i: None})  # fmt: skip

    def profile_init(self) -> None:
        self._shapes = {}

    Profile = cls("IOptimizationProfile", {
        "__init__": profile_init,
        "set_shape": lambda self, name, mn, opt, mx: self._shapes.__setitem__(name, [list(mn), list(opt), list(mx)]),
    })  # fmt: skip
    TimingCache = cls("ITimingCache", {"serialize": lambda self: b"fake timing cache"})

    def config_init(self) -> None:
        self._flags, self._profiles = [], []

    def set_flag(self, flag: Any) -> None:
        calls.append(("set_flag", flag.name))
        self._flags.append(flag.name)

    Config = cls("IBuilderConfig", {
        "__init__": config_init,
        "set_flag": set_flag,
        "set_memory_pool_limit": lambda self, pool, size: calls.append(("set_memory_pool_limit", pool.name, size)),
        "add_optimization_profile": lambda self, p: self._profiles.append(p._shapes) or len(self._profiles) - 1,
        "create_timing_cache": lambda self, data: TimingCache(),
        "set_timing_cache": lambda self, cache, ignore_mismatch: True,
    })  # fmt: skip

    def create_network(self, flags: int) -> Any:
        calls.append(("create_network", flag_names(enums["NetworkDefinitionCreationFlag"], flags)))
        return Network(flags)

    def build(self, network: Any, config: Any) -> bytes:
        calls.append(("build_serialized_network", network._onnx))
        return json.dumps({"onnx": network._onnx, "profiles": config._profiles, "flags": config._flags,
                           "strongly_typed": "STRONGLY_TYPED" in flag_names(enums["NetworkDefinitionCreationFlag"],
                                                                             network._flags)}).encode()  # fmt: skip

    Builder = cls("Builder", {
        "__init__": lambda self, logger: None,
        "create_network": create_network,
        "create_builder_config": lambda self: Config(),
        "create_optimization_profile": lambda self: Profile(),
        "build_serialized_network": build,
    })  # fmt: skip
    int64 = getattr(dtype, "INT64", None)

    def engine_init(self, plan: dict) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(plan["onnx"], load_external_data=False)
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.disable_quant_qdq", "1")  # Q/DQ as TensorRT computes it
        self._session = ort.InferenceSession(plan["onnx"], opts, providers=["CPUExecutionProvider"])
        self._profiles = plan["profiles"]
        names = {1: "FLOAT", 10: "HALF", 7: "INT64", 6: "INT32", 9: "BOOL"}
        self._io = [(v.name, True, names[v.type.tensor_type.elem_type]) for v in model.graph.input]
        self._io += [(v.name, False, names[v.type.tensor_type.elem_type]) for v in model.graph.output]

    def tensor_dtype(self, name: str) -> Any:
        kind = next(k for n, _, k in self._io if n == name)
        if kind == "INT64" and int64 is None:
            kind = "INT32"  # TensorRT 8 has no int64 tensors: the engine's inputs are int32
        return getattr(dtype, kind)

    mode = enums["TensorIOMode"]
    Engine = cls("ICudaEngine", {
        "__init__": engine_init,
        "num_io_tensors": property(lambda self: len(self._io)),
        "get_tensor_name": lambda self, i: self._io[i][0],
        "get_tensor_mode": lambda self, name: mode.INPUT if dict((n, i) for n, i, _ in self._io)[name] else mode.OUTPUT,
        "get_tensor_dtype": tensor_dtype,
        "num_optimization_profiles": property(lambda self: len(self._profiles)),
        "get_tensor_profile_shape": lambda self, name, k: tuple(tuple(s) for s in self._profiles[k][name]),
        "create_execution_context": lambda self: Context(self),
    })  # fmt: skip

    def ctx_init(self, engine: Any) -> None:
        self._engine, self._profile, self._shapes, self._addr, self._out = engine, None, {}, {}, None
        calls.append(("create_execution_context",))

    def set_profile(self, k: int, stream: Any) -> bool:
        calls.append(("set_optimization_profile_async", k))
        self._profile = k
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        lo, _, hi = self._engine._profiles[self._profile][name]
        ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
        self._shapes[name] = tuple(shape)
        self._out = None
        return ok

    def set_address(self, name: str, ptr: int) -> bool:
        self._addr[name] = ptr
        return True

    def _inputs(self) -> dict:
        feeds = {}
        for name, is_input, _ in self._engine._io:
            if is_input:
                dt = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}[
                    tensor_dtype(self._engine, name).name
                ]
                n = int(np.prod(self._shapes[name])) * np.dtype(dt).itemsize
                arr = np.frombuffer(ctypes.string_at(self._addr[name], n), dtype=dt).reshape(self._shapes[name])
                feeds[name] = arr.astype(np.int64) if dt == np.int32 else arr
        return feeds

    def get_tensor_shape(self, name: str) -> tuple:
        if self._out is None:
            outs = self._engine._session.run(None, self._inputs())
            names = [n for n, i, _ in self._engine._io if not i]
            self._out = dict(zip(names, outs, strict=True))
        return self._out[name].shape

    def execute(self, stream: Any) -> bool:
        calls.append(("execute_async_v3",))
        for name, arr in self._out.items():
            data = np.ascontiguousarray(arr, dtype=np.float32)
            ctypes.memmove(self._addr[name], data.ctypes.data, data.nbytes)
        return True

    Context = cls("IExecutionContext", {
        "__init__": ctx_init, "set_optimization_profile_async": set_profile, "set_input_shape": set_input_shape,
        "set_tensor_address": set_address, "get_tensor_shape": get_tensor_shape, "execute_async_v3": execute,
        "_inputs": _inputs,
    })  # fmt: skip

    def deserialize(self, data: bytes) -> Any:
        return Engine(json.loads(bytes(data)))

    Runtime = cls("Runtime", {"__init__": lambda self, logger: None, "deserialize_cuda_engine": deserialize})
    for name, value in (("Logger", Logger), ("Builder", Builder), ("OnnxParser", OnnxParser), ("Runtime", Runtime),
                        ("ILayer", Layer), ("INetworkDefinition", Network), ("IBuilderConfig", Config),
                        ("ICudaEngine", Engine), ("IExecutionContext", Context)):  # fmt: skip
        setattr(mod, name, value)
    if "float32" in api:
        mod.float32 = dtype.FLOAT
    return mod


class FakeDevice:
    """What the fake CUDA runtime allocated and freed: tests check buffers are reused and freed."""

    def __init__(self) -> None:
        self.live: dict[int, Any] = {}
        self.mallocs = 0
        self.streams: set[int] = set()


def make_cuda_runtime(release: str, device: FakeDevice, cc: tuple[int, int] = (8, 7)) -> types.ModuleType:
    """A fake cuda-python runtime module (``cuda.bindings.runtime`` or ``cuda.cudart``)."""
    surface = _surface("cuda-python", release)["modules"]["cuda.bindings.runtime"]
    allowed = set(surface["names"])
    enums = {n: _enum(n, members) for n, members in surface["enums"].items()}
    ok = enums["cudaError_t"].cudaSuccess

    class Module(types.ModuleType):
        def __getattribute__(self, name: str) -> Any:
            if not name.startswith("_") and name not in allowed:
                raise AttributeError(f"module 'cuda.bindings.runtime' has no attribute '{name}' in {release}")
            return super().__getattribute__(name)

    mod = Module("cuda.bindings.runtime")

    def malloc(n: int) -> tuple:
        buf = ctypes.create_string_buffer(int(n))
        device.live[ctypes.addressof(buf)] = buf
        device.mallocs += 1
        return ok, ctypes.addressof(buf)

    def free(ptr: int) -> tuple:
        if ptr not in device.live:
            raise AssertionError(f"cudaFree of {ptr:#x}, which is not allocated")
        del device.live[ptr]
        return (ok,)

    def memcpy(dst: int, src: int, n: int, kind: Any, stream: Any) -> tuple:
        dev = dst if kind.name == "cudaMemcpyHostToDevice" else src
        if dev not in device.live or n > len(device.live[dev]):
            raise AssertionError("copy to or from memory that is not allocated (or too small)")
        ctypes.memmove(dst, src, n)
        return (ok,)

    def stream_create() -> tuple:
        handle = len(device.streams) + 1000 + len(device.live)
        device.streams.add(handle)
        return ok, handle

    def stream_destroy(s: int) -> tuple:
        device.streams.discard(s)
        return (ok,)

    def attr(a: Any, dev: int) -> tuple:
        return ok, cc[0] if a.name.endswith("Major") else cc[1]

    for name, fn in (("cudaMalloc", malloc), ("cudaFree", free), ("cudaMemcpyAsync", memcpy),
                     ("cudaStreamCreate", stream_create), ("cudaStreamDestroy", stream_destroy),
                     ("cudaStreamSynchronize", lambda s: (ok,)), ("cudaDeviceGetAttribute", attr)):  # fmt: skip
        setattr(mod, name, fn)
    for n, e in enums.items():
        setattr(mod, n, e)
    return mod


def install(monkeypatch: Any, trt_release: str | None, cuda_release: str | None, calls: list,
            device: FakeDevice | None = None, legacy_cuda: bool = False) -> types.ModuleType | None:  # fmt: skip
    """Put the fakes in ``sys.modules`` for one test. ``legacy_cuda``: only ``cuda.cudart`` (cuda-python
    before 12.6); else the import paths the release really has."""
    for name in [n for n in sys.modules if n == "cuda" or n.startswith("cuda.") or n == "tensorrt"]:
        monkeypatch.delitem(sys.modules, name)
    trt = make_tensorrt(trt_release, calls) if trt_release else None
    monkeypatch.setitem(sys.modules, "tensorrt", trt)  # None blocks the import, as on a machine without it
    if cuda_release is None:
        monkeypatch.setitem(sys.modules, "cuda", None)
        return trt
    runtime = make_cuda_runtime(cuda_release, device or FakeDevice())
    modules = _surface("cuda-python", cuda_release)["modules"]
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []  # a package, so "from cuda import x" looks at attributes and submodules
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    if not legacy_cuda and modules.get("cuda.bindings.runtime"):
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = runtime
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    if legacy_cuda or modules.get("cuda.cudart"):
        cuda.cudart = runtime
        monkeypatch.setitem(sys.modules, "cuda.cudart", runtime)
    return trt
