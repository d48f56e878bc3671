"""``--target trt``: plan and pre-flight every requested TensorRT version and report them (the
dry run), or build the installed version's engines into the bundle and validate them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import build_engine
from .plan import EngineSpec, Problem, plan_engines
from .preflight import preflight
from .targets import DEVICE_PROFILES, TRT_VERSIONS, build_path, release_for

__all__ = ["TrtConfig", "installed_trt_version", "plan_and_check", "run_trt"]


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

    from .rewrite import prepare_for_trt

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
    from .rewrite import prepare_for_trt

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
        from .validate import validate_engine_set

        meta["validation"] = validate_engine_set(Path(cfg.bundle), out_dir, meta, log)
        rc = 0 if meta["validation"]["passed"] else 1
    (out_dir / "engines.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {out_dir}" + ("" if rc == 0 else " (engines FAILED validation: the runtime refuses them)"))
    return rc
