"""OpenVINO runners (``ov-cpu``, and ``ov-gpu`` / ``ov-npu`` passed through as device names).

They compile the bundle's own ONNX graphs, no IR. An OpenVINO precision is a choice of graph
file and inference hint per graph (``PRECISIONS``):

- ``fp32``: the fp32 graphs with the f32 hint. The hint is set explicitly: on a CPU with native
  bf16 (AVX512_BF16, AMX) OpenVINO's own default is bf16. Its vectors are gated like ONNX
  Runtime's fp32 (worst cosine >= 0.99999), so an index records plain ``fp32`` and either engine
  can search it.
- ``bf16``: the fp32 graphs with the bf16 hint, only where the CPU computes bf16 natively; an
  emulated bf16 is slower than fp32, so it is refused elsewhere.
- ``int8``: weight-only int8 graphs (``MatMulNBits``, block 32), whose activations OpenVINO
  quantises per group of 32 on the fly. OpenVINO runs ONNX Runtime's dynamic-int8 graphs
  (``MatMulInteger``) slower than its own fp32 (vision 0.42x ONNX Runtime's fp32; a query's text
  graph 1.1x slower than OpenVINO fp32), and weight-only ones 1.7x (vision) to 1.5x (text) faster.
  So the exporter, when OpenVINO is installed, writes OpenVINO's own graphs under ``openvino/``
  (``OvPrecision.own``) unless the bundle's int8 graph is already weight-only (ONNX Runtime's
  text graph often is: its gate falls back to it). A bundle without them (exported before, or
  with ``--no-openvino-gate``) runs the int8 text graph and the fp32 vision graph, in bf16 where
  the CPU has it natively.

``bf16`` and ``int8`` vectors differ from ONNX Runtime's, so an index records them as
``ov/bf16`` and ``ov/int8``; they are judged by the reduced-precision gate (at export,
``export.ov_gate``; on the device, ``selftest``).

Compiled graphs are cached (``COLLFM2_OV_CACHE``, default ``~/.cache/collfm2-edge/openvino``;
empty to turn it off), so the second start skips compilation.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cpu import native_bf16 as cpu_native_bf16
from ..errors import ModelFilesError, UserError
from ..parity import FP32_GATE, REDUCED_GATE, Gate
from .defaults import choose
from .runner import Engine, Loaded

__all__ = [
    "PRECISIONS", "OvPrecision", "OvRunner", "OwnGraph", "cache_dir", "load", "native_bf16", "offered", "resolve",
]  # fmt: skip

INSTALL = "OpenVINO is not installed: pip install 'collfm2-edge[openvino]' (or pip install openvino)"
DEVICES = {"ov-cpu": "CPU", "ov-gpu": "GPU", "ov-npu": "NPU"}


@dataclass(frozen=True)
class OwnGraph:
    """A graph file the exporter writes for OpenVINO alone: ``method`` (an ``export.quantize``
    method) applied to the ``source`` precision's graph, run with ``hint``."""

    file: str
    source: str
    method: str
    hint: str


@dataclass(frozen=True)
class OvPrecision:
    name: str
    files: dict[str, str]  # graph -> the bundle precision whose file runs it
    hints: dict[str, str]  # graph -> OpenVINO's INFERENCE_PRECISION_HINT; "bf16?": bf16 where native, else f32
    recorded: str  # what an index records
    gate: Gate
    needs_bf16: bool = False
    cpu: bool = True  # offered on ov-cpu
    own: dict[str, OwnGraph] = field(default_factory=dict)  # graph -> OpenVINO's own file, where the bundle has it

    def own_graph(self, graph: str, manifest: dict[str, Any]) -> OwnGraph | None:
        """OpenVINO's own graph for ``graph``, where this bundle's manifest lists its file."""
        own = self.own.get(graph)
        return own if own is not None and own.file in manifest.get("files", {}) else None

    def graph_file(self, graph: str, manifest: dict[str, Any], features: set[str] | None = None) -> tuple[str, str]:
        """(bundle-relative file, inference hint) that runs ``graph`` with this bundle: OpenVINO's
        own file where the manifest lists it, else the ``files`` precision's graph."""
        own = self.own_graph(graph, manifest)
        if own is not None:
            return own.file, own.hint
        return manifest["precisions"][self.files[graph]]["graphs"][graph]["file"], self.hint(graph, features)

    def missing(self, bundle_precisions: Sequence[str]) -> list[str]:
        """The bundle precisions whose graphs it needs and the bundle lacks."""
        return sorted(set(self.files.values()) - set(bundle_precisions))

    def bundle_files(self, manifest: dict[str, Any]) -> list[str]:
        """The bundle files it loads: each graph's file and the text graph's embedding table."""
        graphs = [self.graph_file(graph, manifest)[0] for graph in self.files]
        return [*graphs, manifest["precisions"][self.files["text"]]["embeddings"]["file"]]

    def hint(self, graph: str, features: set[str] | None = None) -> str:
        hint = self.hints[graph]
        return hint if hint != "bf16?" else ("bf16" if native_bf16(features) else "f32")


_FP32 = {"vision": "fp32", "text": "fp32"}
PRECISIONS: dict[str, OvPrecision] = {
    p.name: p
    for p in (
        OvPrecision("fp32", _FP32, {"vision": "f32", "text": "f32"}, "fp32", FP32_GATE),
        OvPrecision("bf16", _FP32, {"vision": "bf16", "text": "bf16"}, "ov/bf16", REDUCED_GATE, needs_bf16=True),
        OvPrecision(
            "int8",
            {"vision": "fp32", "text": "int8"},
            {"vision": "bf16?", "text": "f32"},
            "ov/int8",
            REDUCED_GATE,
            own={
                "vision": OwnGraph("openvino/int8-vision.onnx", "fp32", "weight-only-int8", "f32"),
                "text": OwnGraph("openvino/int8-text.onnx", "fp32", "weight-only-int8", "f32"),
            },
        ),
        # GPUs and NPUs compute in fp16; the x86 CPUs we target do not (AVX512_FP16 aside).
        OvPrecision("fp16", _FP32, {"vision": "f16", "text": "f16"}, "ov/fp16", REDUCED_GATE, cpu=False),
    )
}


def native_bf16(features: set[str] | None = None) -> bool:
    """True where the CPU computes bf16 in hardware (AVX512_BF16; every AMX CPU has it too).

    ``COLLFM2_OV_FORCE_BF16=1`` lets the tests run the bf16 path on any CPU (OpenVINO then
    computes what it can; the gate still judges the result)."""
    return os.environ.get("COLLFM2_OV_FORCE_BF16") == "1" or cpu_native_bf16(features)


def cache_dir() -> Path | None:
    """Where compiled graphs are kept (``COLLFM2_OV_CACHE``; empty: nowhere)."""
    raw = os.environ.get("COLLFM2_OV_CACHE")
    if raw is not None:
        return Path(raw) if raw.strip() else None
    return Path.home() / ".cache" / "collfm2-edge" / "openvino"


def resolve(engine: Engine, precision: str | None, bundle_precisions: Sequence[str],
            features: set[str] | None = None) -> OvPrecision:  # fmt: skip
    """The OpenVINO precision ``precision`` names (``fp32``, ``bf16``, ``int8``, or ``ov/<name>`` as an
    index records it; None: the engine's default), refused with one line where it cannot run."""
    if precision is None and engine.device == "cpu":
        _, row = choose(features)  # the table's precision where it picked this engine
        precision = row.precision if row.engine == engine.name and row.precision else "fp32"
        wanted = PRECISIONS.get(precision)
        if wanted is not None and wanted.missing(bundle_precisions):
            precision = "fp32"  # an fp32-only bundle under a row that chose int8: fp32, as ONNX Runtime's rule does
    elif precision is None:
        precision = "fp16"
    name = precision[3:] if precision.startswith("ov/") else precision
    chosen = PRECISIONS.get(name)
    if chosen is None:
        raise UserError(f"{engine.name}: no precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    cpu = DEVICES[engine.name] == "CPU"
    if cpu and not chosen.cpu:
        raise UserError(f"{engine.name}: {name} runs on OpenVINO's GPU and NPU devices, not the CPU")
    if cpu and chosen.needs_bf16 and not native_bf16(features):
        raise UserError(f"{engine.name}: this CPU has no native bf16 (AVX512_BF16 or AMX); emulated bf16 is slower "
                        "than fp32, so use --precision fp32 or int8")  # fmt: skip
    missing = chosen.missing(bundle_precisions)
    if missing:
        raise ModelFilesError(f"{engine.name} {name} needs the bundle's {' and '.join(missing)} graphs; re-export with "
                              f"--precision {','.join(sorted(set(chosen.files.values())))}")  # fmt: skip
    return chosen


def offered(engine: Engine, bundle_precisions: Sequence[str], features: set[str] | None = None) -> list[str]:
    """The precisions ``engine`` can run on this machine with this bundle's graphs."""
    out = []
    for name in PRECISIONS:
        try:
            resolve(engine, name, bundle_precisions, features)
        except (UserError, ModelFilesError):
            continue
        out.append(name)
    return out


class OvRunner:
    """A ``Runner`` over an ``openvino.CompiledModel``: one infer request per thread (a request is
    not thread-safe, and the service encodes queries while its ingest worker encodes pages)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._outputs = list(compiled.outputs)
        self._local = threading.local()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        # share_outputs=False: the request's buffers are rewritten by its next call.
        result = request.infer(feeds, share_inputs=True, share_outputs=False)
        return [np.asarray(result[o]) for o in self._outputs]


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UserError(INSTALL) from None
    return openvino


def compile_graph(path: Path, device: str, hint: str, threads: int | None, cache: bool = True) -> Any:
    """``path`` compiled for ``device`` with inference hint ``hint``, through the compile cache."""
    ov = _import_openvino()
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        config["NUM_STREAMS"] = 1
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
    folder = cache_dir() if cache else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(folder)
        except OSError:  # a read-only home: compile each time, as without a cache
            pass
    try:
        return core.compile_model(str(path), device, config)
    except Exception as exc:  # OpenVINO raises its own types; the file is the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFilesError(f"{path}: OpenVINO cannot compile it for {device} ({first})") from exc


def load(
    engine: Engine, bundle: Any, precision: str | None, threads: int | None, providers: Sequence[Any] | None
) -> Loaded:
    """Runners for ``precision`` (see ``PRECISIONS``); graph files are checked against the manifest."""
    chosen = resolve(engine, precision, bundle.precisions)
    _import_openvino()
    gated = (bundle.manifest.get("openvino") or {}).get(chosen.name)
    if isinstance(gated, dict) and gated.get("passed") is False:
        why = "; ".join(f"{g}: {', '.join(r.get('failures') or [])}" for g, r in (gated.get("graphs") or {}).items()
                        if isinstance(r, dict) and not r.get("passed"))  # fmt: skip
        raise ModelFilesError(f"{bundle.path}: OpenVINO {chosen.name} failed its gate at export on "
                              f"{gated.get('measured_on', '?')} ({why}); use --precision fp32, or check this machine "
                              f"with python -m runtime selftest --engine {engine.name}")  # fmt: skip
    bundle.verify_files(chosen.bundle_files(bundle.manifest))
    device = DEVICES[engine.name]
    runners: dict[str, Any] = {}
    graphs: dict[str, Any] = {}
    for graph, source in chosen.files.items():
        rel, hint = chosen.graph_file(graph, bundle.manifest)
        spec = dict(bundle.precision(source)["graphs"][graph])
        own = chosen.own_graph(graph, bundle.manifest)
        if own is not None:  # the same I/O; its method decides how it is batched
            spec.update(file=own.file, method=own.method)
        runners[graph] = OvRunner(compile_graph(bundle.file(rel), device, hint, threads))
        graphs[graph] = spec
    # The text graph's own embedding table goes with it.
    text_entry = bundle.precision(chosen.files["text"])
    entry = {**text_entry, "graphs": graphs, "gate": asdict(chosen.gate), "session_config": {}}
    return Loaded(runners, chosen.recorded, entry)
