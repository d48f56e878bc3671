"""``--target trt``: TensorRT engine plans, a pre-flight check that needs no TensorRT, and the builder.

Everything here except ``build_engine``'s real run works without ``tensorrt``: the device
profiles (batch and sequence ranges sized to each board's memory), the build path each TensorRT
generation takes (``BUILD_PATHS``), the engine plan derived from a bundle's manifest, and a
static check of each ONNX graph against what TensorRT's ONNX parser supports
(``export/trt_ops.json``, the operator matrices of onnx-tensorrt 8.5, 8.6 and 10.1).
``build_engine`` drives the ``tensorrt`` Python API; the tests run it against a strict fake of
each release's API surface (``export/trt_api/``). Engines build on a Jetson or an x86 box with
the same TensorRT version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle.trt_manifest import ENGINE_SCHEMA_VERSION

__all__ = [
    "BUILD_PATHS",
    "DEVICE_PROFILES",
    "TRT_VERSIONS",
    "BuildPath",
    "DeviceProfile",
    "EngineSpec",
    "Problem",
    "TrtConfig",
    "build_engine",
    "build_path",
    "plan_engines",
    "preflight",
    "release_for",
    "run_trt",
]

_OPS = json.loads((Path(__file__).parent / "trt_ops.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Release:
    """A TensorRT release the project targets: where it ships and which parser matrix checks it."""

    where: str
    table: str  # key of trt_ops.json
    max_opset: int


# JetPack -> TensorRT (NVIDIA's release notes). onnx-tensorrt's published operator matrices reachable
# here end at 10.1, so every 10.x and 11.x release is pre-flighted against that one (named in the output).
TRT_VERSIONS: dict[str, Release] = {
    "8.5": Release("JetPack 5.1 (CUDA 11.4)", "8.5", 17),
    "8.6": Release("JetPack 6.0 (CUDA 12.2)", "8.6", 17),
    "10.1": Release("desktop TensorRT 10.1", "10.1", 20),
    "10.3": Release("JetPack 6.1 / 6.2 (CUDA 12.6)", "10.1", 20),
    "10.13": Release("JetPack 7.0 / 7.1, Thor (CUDA 13.0)", "10.1", 20),
    "10.16": Release("JetPack 7.2, Orin and Thor (CUDA 13.2)", "10.1", 20),
    "11.4": Release("JetPack 7.2.2+ on AGX Orin and Thor; pip install tensorrt", "10.1", 20),
}
MAX_OPSET = {v: r.max_opset for v, r in TRT_VERSIONS.items()}
_ONNX_TO_TRT_TYPE = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}


@dataclass(frozen=True)
class BuildPath:
    """How one TensorRT generation turns a bundle into engines."""

    name: str  # "weakly typed" | "strongly typed"
    releases: str
    sources: dict[str, str]  # engine precision -> the bundle precision whose ONNX graphs it builds from
    how: str

    @property
    def strongly_typed(self) -> bool:
        return self.name == "strongly typed"


_STRONG_SOURCES = {"fp16": "fp16", "int8": "int8-qdq"}
BUILD_PATHS: dict[int, BuildPath] = {
    8: BuildPath("weakly typed", "TensorRT 8.x (JetPack 5.1, 6.0)", {"fp16": "fp32", "int8": "int8-qdq"},
                 "EXPLICIT_BATCH network, BuilderFlag.FP16 (and INT8 for Q/DQ graphs); normalisation, softmax and "
                 "reduction layers pinned to fp32 with OBEY_PRECISION_CONSTRAINTS"),
    10: BuildPath("strongly typed", "TensorRT 10.x (JetPack 6.1 to 7.2)", _STRONG_SOURCES,
                  "STRONGLY_TYPED network: every layer runs in its ONNX type (the fp16 graph keeps norms, softmax "
                  "and the L2 norm in fp32; Q/DQ pairs give int8); no precision flags (weak typing is deprecated "
                  "since 10.12)"),
    11: BuildPath("strongly typed", "TensorRT 11.x (JetPack 7.2.2+)", _STRONG_SOURCES,
                  "strongly typed, as on 10.x; none of the API 11.0 removed (BuilderFlag.FP16/INT8, precision "
                  "constraints, layer precision, EXPLICIT_BATCH)"),
}  # fmt: skip


def build_path(version: str) -> BuildPath:
    """The build path of TensorRT ``version`` ("8.6.2", "10.3", "11.4.0.106", ...)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r}") from None
    if major < 8:
        raise ValueError(f"TensorRT {version} is too old: 8.5 (JetPack 5.1) is the oldest supported")
    return BUILD_PATHS[8 if major < 10 else min(major, 11)]


def release_for(version: str) -> str:
    """The ``TRT_VERSIONS`` key that covers an installed version (8.6.2 -> 8.6, 10.3.0 -> 10.3)."""
    mm = ".".join(str(version).split(".")[:2])
    if mm in TRT_VERSIONS:
        return mm
    major = int(mm.split(".")[0])
    return "11.4" if major >= 11 else "10.16" if major == 10 else "8.6"


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

    if trt_version not in TRT_VERSIONS:
        raise ValueError(f"unknown TensorRT version {trt_version!r}; known: {', '.join(TRT_VERSIONS)}")
    ops = _OPS[TRT_VERSIONS[trt_version].table]
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
        if dt == "INT64" and "INT64" not in ops.get("Cast", [False, []])[1]:
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


@dataclass(frozen=True)
class TrtConfig:
    bundle: str
    precision: str
    profile: str
    workspace_mb: int | None = None
    timing_cache: str | None = None
    trt_versions: tuple[str, ...] = tuple(TRT_VERSIONS)
    export: Any = None  # an OnnxConfig when engines are built straight from --model (bundle exported first)
    validate: bool = False


def installed_trt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def plan_and_check(cfg: TrtConfig, work: Path) -> tuple[dict[str, list[EngineSpec]], list[str]]:
    """Per TensorRT version: the build path, the engine plan with pre-flight problems attached,
    and the lines to print. TensorRT 8.x is checked on the rewritten graph it would build from
    (written under ``work``). A version whose source graphs the bundle lacks gets one error."""
    from runtime.bundle.manifest import open_bundle

    from .trt_rewrite import prepare_for_trt

    bundle = open_bundle(cfg.bundle, verify=False)
    prof = DEVICE_PROFILES[cfg.profile]
    lines = [f"profile   {prof.name}: {prof.note}; workspace {cfg.workspace_mb or prof.workspace_mb} MB"]
    plans: dict[str, list[EngineSpec]] = {}
    for version in cfg.trt_versions:
        release, path = TRT_VERSIONS[version], build_path(version)
        lines.append(f"TensorRT {version} ({release.where}): {path.name} build: {path.how}")
        try:
            specs = plan_engines(bundle.path, bundle.manifest, cfg.precision, cfg.profile, version)
        except ValueError as exc:
            lines.append(f"  error: {exc}")
            plans[version] = [EngineSpec("bundle", "", "", cfg.precision, [], problems=[
                Problem("error", "bundle", "", "", f"[TensorRT {version}] {exc}")])]  # fmt: skip
            continue
        plans[version] = specs
        for spec in specs:
            lines.append(f"  engine {spec.graph}.engine <- {spec.onnx} (sha256 {spec.onnx_sha256[:12]}...), "
                         f"{spec.precision}" + (f"; fp32: {', '.join(spec.fp32_layer_ops)}" if spec.fp32_layer_ops
                                                else ""))  # fmt: skip
            for k, p in enumerate(spec.profiles):
                shapes = "; ".join(f"{name} {mn}..{mx} (opt {opt})" for name, (mn, opt, mx) in p.items())
                lines.append(f"    profile {k}: {shapes}")
            try:
                graph_path = prepare_for_trt(bundle.path / spec.onnx, work / version / spec.graph, version)
            except ValueError as exc:
                spec.problems.append(
                    Problem("error", spec.graph, "", "", f"[TensorRT {version}] cannot rewrite: {exc}")
                )
                lines.append(f"    pre-flight: cannot rewrite for this version: {exc}")
                continue
            note = "" if graph_path == bundle.path / spec.onnx else " on the opset-17 rewrite"
            table = "" if release.table == version else f" (onnx-tensorrt {release.table} operator matrix)"
            problems = preflight(graph_path, spec.graph, version, spec.profiles)
            errors = [p for p in problems if p.severity == "error"]
            spec.problems += [Problem(p.severity, p.graph, p.node, p.op, f"[TensorRT {version}] {p.message}")
                              for p in problems]  # fmt: skip
            verdict = "ok" if not errors else f"{len(errors)} error(s)"
            lines.append(f"    pre-flight TensorRT {version}{table}{note}: {verdict}, "
                         f"{len(problems) - len(errors)} warning(s)")  # fmt: skip
            lines += [f"      {p}" for p in problems]
    return plans, lines


def run_trt(cfg: TrtConfig, dry_run: bool, log: Callable[[str], None] = print) -> int:
    """Dry run: build paths, plans and pre-flight (exit 1 on any error). Else build the engines of
    the installed TensorRT into the bundle, and with ``validate`` check them against ONNX Runtime."""
    import tempfile

    version = installed_trt_version()
    if not dry_run:
        if version is None:
            raise RuntimeError("building engines needs the tensorrt Python package (JetPack, or pip install tensorrt)")
        cfg = TrtConfig(**{**cfg.__dict__, "trt_versions": (release_for(version),)})
    with tempfile.TemporaryDirectory() as tmp:
        plans, lines = plan_and_check(cfg, Path(tmp))
    for line in lines:
        log(line)
    failed = any(p.severity == "error" for specs in plans.values() for s in specs for p in s.problems)
    if dry_run:
        here = f"installed here: TensorRT {version}" if version else "no TensorRT installed here"
        log(f"(dry run: nothing built; {here}){' PRE-FLIGHT FAILED' if failed else ''}")
        return 1 if failed else 0
    (specs,) = plans.values()
    blocking = [p for s in specs for p in s.problems if p.severity == "error"]
    if blocking:
        raise RuntimeError(f"pre-flight for the installed TensorRT {version} failed: {blocking[0]}")
    prof = DEVICE_PROFILES[cfg.profile]
    out_dir = Path(cfg.bundle) / "trt" / f"{cfg.profile}-{cfg.precision}"
    out_dir.mkdir(parents=True, exist_ok=True)
    from .trt_rewrite import prepare_for_trt

    engines = []
    for spec in specs:
        src = prepare_for_trt(Path(cfg.bundle) / spec.onnx, out_dir / "onnx", release_for(version))
        engines.append(build_engine(src, spec, out_dir / f"{spec.graph}.engine",
                                    cfg.workspace_mb or prof.workspace_mb,
                                    Path(cfg.timing_cache) if cfg.timing_cache else None, log))  # fmt: skip
    meta: dict[str, Any] = {"profile": cfg.profile, "precision": cfg.precision,
                            "source_precision": specs[0].source_precision, "build_path": build_path(version).name,
                            "tensorrt_version": version, "engines": engines}  # fmt: skip
    rc = 0
    if cfg.validate:
        from .trt_validate import validate_engine_set

        meta["validation"] = validate_engine_set(Path(cfg.bundle), out_dir, meta, log)
        rc = 0 if meta["validation"]["passed"] else 1
    (out_dir / "engines.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {out_dir}" + ("" if rc == 0 else " (engines FAILED validation: the runtime refuses them)"))
    return rc
