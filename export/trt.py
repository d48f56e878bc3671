"""``--target trt``: TensorRT engine plans, a pre-flight check that needs no TensorRT, and the builder.

Everything here except ``build_engine`` runs without ``tensorrt``: the device profiles (batch and
sequence ranges sized to each board's memory), the engine plan derived from a bundle's manifest,
and a static check of each ONNX graph against what TensorRT's ONNX parser supports in a stated
version (``export/trt_ops.json``, the operator matrices of onnx-tensorrt 8.5, 8.6 and 10.1).
``build_engine`` is the real builder against the ``tensorrt`` Python API; it runs on a Jetson or
an x86 box with the same TensorRT version.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.trt_manifest import ENGINE_SCHEMA_VERSION

__all__ = [
    "DEVICE_PROFILES",
    "TRT_VERSIONS",
    "DeviceProfile",
    "EngineSpec",
    "Problem",
    "TrtConfig",
    "build_engine",
    "plan_engines",
    "preflight",
    "run_trt",
]

_OPS = json.loads((Path(__file__).parent / "trt_ops.json").read_text(encoding="utf-8"))
# JetPack 5.1 ships TensorRT 8.5, JetPack 6.0 ships 8.6, JetPack 6.1+ ships 10.x (checked against
# the 10.1 parser matrix, the oldest 10.x one).
TRT_VERSIONS = {"8.5": "JetPack 5.1", "8.6": "JetPack 6.0", "10.1": "JetPack 6.1+ / desktop TensorRT 10"}
MAX_OPSET = {"8.5": 17, "8.6": 17, "10.1": 20}
_ONNX_TO_TRT_TYPE = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}
# Ops whose fp16 versions lose too much; fp16 engines keep these layers in fp32 (issue 6, section 1).
FP32_LAYER_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "ReduceL2", "Softmax")


@dataclass(frozen=True)
class DeviceProfile:
    """Shape ranges for one board, sized to its memory (fp16 weights: ~0.9 GB for both graphs)."""

    name: str
    memory_gb: int
    vision_batch: tuple[int, int, int]  # tiles per call: min, opt, max (a page is 1..11 tiles)
    query_batch: tuple[int, int, int]
    query_seq: tuple[int, int, int]
    doc_batch: tuple[int, int, int]
    doc_seq: tuple[int, int, int]  # up to the longest tiled page: 10 tiles + thumbnail ~ 2,900 tokens
    workspace_mb: int
    note: str


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "orin-nano": DeviceProfile("orin-nano", 8, (1, 4, 11), (1, 1, 8), (1, 32, 128), (1, 1, 1), (1, 300, 2900), 1024,
                               "Orin Nano 8 GB: memory shared with the OS; one page at a time"),
    "orin-nx": DeviceProfile("orin-nx", 16, (1, 8, 11), (1, 4, 16), (1, 32, 128), (1, 1, 2), (1, 300, 2900), 2048,
                             "Orin NX 16 GB"),
    "agx-orin": DeviceProfile("agx-orin", 64, (1, 11, 11), (1, 8, 32), (1, 32, 128), (1, 2, 4), (1, 300, 2900), 4096,
                              "AGX Orin 32/64 GB"),
    "desktop": DeviceProfile("desktop", 24, (1, 11, 22), (1, 16, 64), (1, 32, 128), (1, 4, 8), (1, 300, 2900), 8192,
                             "x86 + discrete GPU, >= 16 GB VRAM"),
}  # fmt: skip


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
    fp32_layer_ops: tuple[str, ...] = FP32_LAYER_OPS
    problems: list[Problem] = field(default_factory=list)


def _shapes(profile: DeviceProfile, graph: str, model: dict[str, Any]) -> list[dict[str, list[list[int]]]]:
    n, d = model["max_num_patches"], model["hidden_size"]
    if graph == "vision":
        pd, g = model["patch_dim"], model["position_grid"]
        b = profile.vision_batch
        # Patch counts from the smallest bucket to the maximum (opt: full tiles, the common case).
        lo = min(model.get("patch_buckets", [n]))
        patches = (lo, n, n)
        return [{
            "pixel_values": [[x, p, pd] for x, p in zip(b, patches, strict=True)],
            "pixel_attention_mask": [[x, p] for x, p in zip(b, patches, strict=True)],
            "pos_weights": [[x, p, g * g] for x, p in zip(b, patches, strict=True)],
            "unshuffle_index": [[x, p // 4, 4] for x, p in zip(b, patches, strict=True)],
        }]  # fmt: skip
    out = []
    for batch, seq in ((profile.query_batch, profile.query_seq), (profile.doc_batch, profile.doc_seq)):
        out.append({
            "inputs_embeds": [[b, s, d] for b, s in zip(batch, seq, strict=True)],
            "attention_mask": [[b, s] for b, s in zip(batch, seq, strict=True)],
        })  # fmt: skip
    return out


def plan_engines(bundle_dir: Path, manifest: dict[str, Any], precision: str, profile: str) -> list[EngineSpec]:
    """Which ONNX file each engine comes from and its optimisation profiles.

    fp16 engines build from the fp32 graphs (TensorRT picks fp16 kernels; normalisations pinned to
    fp32); int8 engines build from the ``int8-qdq`` graphs (explicit quantisation).
    """
    if profile not in DEVICE_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(DEVICE_PROFILES)}")
    source = {"fp16": "fp32", "int8": "int8-qdq"}.get(precision)
    if source is None:
        raise ValueError("TensorRT precision must be fp16 or int8")
    if source not in manifest["precisions"]:
        raise ValueError(f"{bundle_dir}: the bundle has no {source} graphs (export with --precision ...,{source})")
    entry = manifest["precisions"][source]
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
            )
        )
    return specs


# ---------------------------------------------------------------------------------------------
# Pre-flight


def _const_names(model: Any) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def preflight(
    path: Path, graph: str, trt_version: str, profiles: list[dict[str, list[list[int]]]] | None = None
) -> list[Problem]:
    """Problems TensorRT ``trt_version``'s ONNX parser would hit on ``path``, each with its node."""
    import onnx

    if trt_version not in _OPS or trt_version.startswith("_"):
        raise ValueError(f"unknown TensorRT version {trt_version!r}; known: {', '.join(TRT_VERSIONS)}")
    ops = _OPS[trt_version]
    model = onnx.load(str(path))
    problems: list[Problem] = []
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > MAX_OPSET[trt_version]:
        problems.append(Problem("error", graph, "", "", f"opset {opset} > {MAX_OPSET[trt_version]}, the newest "
                                f"TensorRT {trt_version} parses"))  # fmt: skip
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference is a help for dtype checks, not a requirement
        inferred = model
    dtypes = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output)}  # fmt: skip
    dtypes |= {t.name: t.data_type for t in model.graph.initializer}
    consts = _const_names(model)
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            problems.append(Problem("error", graph, name, node.op_type, f"custom domain {node.domain!r} (ORT-only op)"))
            continue
        row = ops.get(node.op_type)
        if row is None or not row[0]:
            problems.append(Problem("error", graph, name, node.op_type, f"not supported by TensorRT {trt_version}"))
            continue
        types = row[1]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize" and attrs.get("antialias", 0):
            problems.append(Problem("error", graph, name, node.op_type, "antialias=1 is not supported"))
        axes = _axes_input(node)
        if axes and axes not in consts:
            problems.append(Problem("error", graph, name, node.op_type, "`axes` must be a constant"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = _initializer(model, node.input[2])
            if zp is not None and np.any(zp != 0):
                problems.append(Problem("error", graph, name, node.op_type, "zero point must be 0 (symmetric)"))
        dt = _ONNX_TO_TRT_TYPE.get(dtypes.get(node.input[0] if node.input else "", 0))
        int64_ok = dt == "INT64" and "INT32" in types  # TensorRT casts int64 down where it can
        if types and dt and dt not in types and not int64_ok and node.op_type not in ("Cast", "Shape", "Constant"):
            problems.append(Problem("error", graph, name, node.op_type, f"input type {dt} not in {types}"))
    for inp in model.graph.input:
        dt = _ONNX_TO_TRT_TYPE.get(inp.type.tensor_type.elem_type)
        if dt == "INT64" and "INT64" not in _OPS[trt_version].get("Cast", [False, []])[1]:
            problems.append(Problem("warning", graph, inp.name, "input",
                                    f"int64 input: TensorRT {trt_version} casts it to int32; feed int32"))  # fmt: skip
        if profiles:
            dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
            for k, prof in enumerate(profiles):
                if inp.name not in prof:
                    problems.append(Problem("error", graph, inp.name, "input", f"profile {k} gives no shapes"))
                    continue
                for shape in prof[inp.name]:
                    fixed_ok = len(shape) == len(dims) and all(
                        not isinstance(d, int) or not d or d == n for d, n in zip(dims, shape, strict=True)
                    )
                    if not fixed_ok:
                        msg = f"profile {k} shape {shape} does not fit the graph's {dims}"
                        problems.append(Problem("error", graph, inp.name, "input", msg))
    return problems


def _axes_input(node: Any) -> str:
    """The name of a node's ``axes`` input (opset >= 13/18 moved axes from attribute to input)."""
    if node.op_type == "Slice":
        return node.input[3] if len(node.input) > 3 else ""
    if node.op_type in ("Squeeze", "Unsqueeze", "ReduceMean", "ReduceL2", "ReduceSum", "ReduceMax"):
        return node.input[1] if len(node.input) > 1 else ""
    return ""


def _initializer(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


# ---------------------------------------------------------------------------------------------
# Build (needs tensorrt)


def build_engine(
    onnx_path: Path,
    spec: EngineSpec,
    out_path: Path,
    workspace_mb: int,
    timing_cache: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Parse ``onnx_path``, build a serialized engine at ``out_path``, return its manifest."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            "building engines needs the tensorrt Python package (JetPack or pip install tensorrt)"
        ) from exc
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if spec.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes
    # Normalisations stay fp32 (issue 6 section 1): pin those layers and make TensorRT obey.
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(op.lower() in layer.name.lower() for op in spec.fp32_layer_ops) or layer.type in (
            trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE
        ):  # fmt: skip
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
    log(
        f"building {spec.graph} ({spec.precision}, {len(spec.profiles)} profile(s), {pinned} layers pinned to fp32) ..."
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {spec.graph}; see the log above")
    out_path.write_bytes(bytes(serialized))
    if cache is not None and timing_cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
    import hashlib

    return {
        "schema_version": ENGINE_SCHEMA_VERSION,
        "graph": spec.graph,
        "file": out_path.name,
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
        "tensorrt_version": trt.__version__,
        "compute_capability": _compute_capability(),
        "precision": spec.precision,
        "profiles": spec.profiles,
        "onnx": spec.onnx,
        "onnx_sha256": spec.onnx_sha256,
        "fp32_layers": pinned,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _compute_capability() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return "{}.{}".format(*torch.cuda.get_device_capability())
    except ImportError:
        pass
    from runtime.trt_manifest import current_compute_capability

    return current_compute_capability()


@dataclass(frozen=True)
class TrtConfig:
    bundle: str
    precision: str
    profile: str
    workspace_mb: int | None = None
    timing_cache: str | None = None
    trt_versions: tuple[str, ...] = tuple(TRT_VERSIONS)
    export: Any = None  # an OnnxConfig when engines are built straight from --model (bundle exported first)


def installed_trt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def _parser_table(version: str) -> str:
    """The parser matrix that covers an installed TensorRT version (8.5.x -> 8.5, 10.3 -> 10.1)."""
    major_minor = ".".join(version.split(".")[:2])
    if major_minor in _OPS:
        return major_minor
    return "10.1" if int(version.split(".")[0]) >= 10 else "8.6"


def plan_and_check(cfg: TrtConfig, work: Path) -> tuple[list[EngineSpec], list[str]]:
    """Engine plan with pre-flight problems attached; also the lines to print. TensorRT 8.x is
    checked on the rewritten graph it would build from (written under ``work``)."""
    from runtime.bundle import open_bundle

    from .trt_rewrite import prepare_for_trt

    bundle = open_bundle(cfg.bundle, verify=False)
    specs = plan_engines(bundle.path, bundle.manifest, cfg.precision, cfg.profile)
    prof = DEVICE_PROFILES[cfg.profile]
    lines = [f"profile   {prof.name}: {prof.note}; workspace {cfg.workspace_mb or prof.workspace_mb} MB"]
    for spec in specs:
        src = f"{spec.onnx} (sha256 {spec.onnx_sha256[:12]}...)"
        lines.append(
            f"engine    {spec.graph}.engine <- {src}, {spec.precision}; fp32: {', '.join(spec.fp32_layer_ops)}"
        )
        for k, p in enumerate(spec.profiles):
            shapes = "; ".join(f"{name} {mn}..{mx} (opt {opt})" for name, (mn, opt, mx) in p.items())
            lines.append(f"  profile {k}: {shapes}")
        for version in cfg.trt_versions:
            try:
                graph_path = prepare_for_trt(bundle.path / spec.onnx, work / spec.graph, version)
            except ValueError as exc:
                spec.problems.append(
                    Problem("error", spec.graph, "", "", f"[TensorRT {version}] cannot rewrite: {exc}")
                )
                lines.append(f"  pre-flight TensorRT {version}: cannot rewrite for this version: {exc}")
                continue
            note = "" if graph_path == bundle.path / spec.onnx else " on the opset-17 rewrite"
            problems = preflight(graph_path, spec.graph, version, spec.profiles)
            errors = [p for p in problems if p.severity == "error"]
            spec.problems += [Problem(p.severity, p.graph, p.node, p.op, f"[TensorRT {version}] {p.message}")
                              for p in problems]  # fmt: skip
            verdict = "ok" if not errors else f"{len(errors)} error(s)"
            lines.append(f"  pre-flight TensorRT {version} ({TRT_VERSIONS[version]}){note}: {verdict}, "
                         f"{len(problems) - len(errors)} warning(s)")  # fmt: skip
            lines += [f"    {p}" for p in problems]
    return specs, lines


def run_trt(cfg: TrtConfig, dry_run: bool, log: Any = print) -> int:
    """Dry run: plan + pre-flight (exit 1 on any error). Else build the engines into the bundle."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        specs, lines = plan_and_check(cfg, Path(tmp))
    for line in lines:
        log(line)
    failed = any(p.severity == "error" for s in specs for p in s.problems)
    if dry_run:
        log("(dry run: nothing built)" + (" PRE-FLIGHT FAILED" if failed else ""))
        return 1 if failed else 0
    version = installed_trt_version()
    if version is None:
        raise RuntimeError("building engines needs the tensorrt Python package (JetPack, or pip install tensorrt)")
    table = _parser_table(version)
    blocking = [p for s in specs for p in s.problems if p.severity == "error" and f"[TensorRT {table}]" in p.message]
    if blocking:
        raise RuntimeError(f"pre-flight for the installed TensorRT {version} failed: {blocking[0]}")
    prof = DEVICE_PROFILES[cfg.profile]
    out_dir = Path(cfg.bundle) / "trt" / f"{cfg.profile}-{cfg.precision}"
    out_dir.mkdir(parents=True, exist_ok=True)
    from .trt_rewrite import prepare_for_trt

    engines = []
    for spec in specs:
        src = prepare_for_trt(Path(cfg.bundle) / spec.onnx, out_dir / "onnx", table)
        engines.append(build_engine(src, spec, out_dir / f"{spec.graph}.engine",
                                    cfg.workspace_mb or prof.workspace_mb,
                                    Path(cfg.timing_cache) if cfg.timing_cache else None, log))  # fmt: skip
    (out_dir / "engines.json").write_text(json.dumps({"profile": cfg.profile, "engines": engines}, indent=2) + "\n")
    log(f"wrote {out_dir}")
    return 0


def spec_dict(spec: EngineSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["problems"] = [str(p) for p in spec.problems]
    return d
