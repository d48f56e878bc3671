"""The engine plan: from a bundle's manifest and a device profile, which engine each graph
becomes, from which ONNX file (and its sha256), at which precision, over which optimisation
profiles; the problems pre-flight attaches to each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .targets import DEVICE_PROFILES, DeviceProfile, build_path

__all__ = ["FP32_LAYER_OPS", "EngineSpec", "Problem", "plan_engines"]


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" stops a build; "warning" is reported
    graph: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.graph}:{self.node} ({self.op})" if self.node else self.graph
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class EngineSpec:
    graph: str  # vision | text
    onnx: str  # path inside the bundle
    onnx_sha256: str
    precision: str  # fp16 | int8
    profiles: list[dict[str, list[list[int]]]]  # per optimisation profile: input -> [min, opt, max] shapes
    source_precision: str = "fp32"  # the bundle precision the ONNX graph belongs to
    fp32_layer_ops: tuple[str, ...] = ()  # weakly typed builds pin these layers to fp32
    problems: list[Problem] = field(default_factory=list)


def _shapes(profile: DeviceProfile, graph: str, model: dict[str, Any]) -> list[dict[str, list[list[int]]]]:
    """Optimisation profiles of ``graph`` for ``profile``, from the graph contract."""
    from runtime.bundle.contract import GRAPH_SPECS

    return GRAPH_SPECS[graph].trt_ranges(profile, model)


# Ops whose fp16 versions lose too much: weakly typed fp16 engines pin these layers to fp32 (the
# strongly typed path gets the same from the fp16 graph, export.quantize.FP16_KEEP_FP32_OPS).
FP32_LAYER_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "ReduceL2", "Softmax")


def plan_engines(
    bundle_dir: Path, manifest: dict[str, Any], precision: str, profile: str, trt_version: str = "10.3"
) -> list[EngineSpec]:
    """Which ONNX file each engine comes from, and its optimisation profiles, for ``trt_version``.

    Weakly typed TensorRT (8.x) builds fp16 engines from the fp32 graphs; strongly typed TensorRT
    (10.x, 11.x) from the fp16 graphs; both build int8 engines from the ``int8-qdq`` graphs."""
    if profile not in DEVICE_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(DEVICE_PROFILES)}")
    if precision not in ("fp16", "int8"):
        raise ValueError("TensorRT precision must be fp16 or int8")
    path = build_path(trt_version)
    source = path.sources[precision]
    if source not in manifest["precisions"]:
        raise ValueError(
            f"{bundle_dir}: TensorRT {trt_version} ({path.name}) builds {precision} engines from the {source} "
            f"graphs, which the bundle lacks; export with --precision ...,{source}"
        )
    entry = manifest["precisions"][source]
    pinned = FP32_LAYER_OPS if not path.strongly_typed and precision == "fp16" else ()
    specs = []
    for graph in ("vision", "text"):
        rel = entry["graphs"][graph]["file"]
        specs.append(
            EngineSpec(
                graph,
                rel,
                manifest["files"][rel],
                precision,
                _shapes(DEVICE_PROFILES[profile], graph, manifest["model"]),
                source,
                pinned,
            )
        )
    return specs
