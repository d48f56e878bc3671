"""``python -m export``: a thin CLI over small steps.

Targets: ``checkpoint`` writes a preset (or re-writes a checkpoint) in the published ColLFM2
layout; ``onnx`` exports the vision and text graphs in the requested precisions, gated and
optionally validated against the PyTorch reference, as a bundle (``export.onnx_export``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.errors import UserError

from .onnx_export import DEFAULT_OPSET, OnnxConfig
from .onnx_export import plan as onnx_plan
from .presets import DEFAULT_PRESET, PRESETS
from .recipes import Precision, parse_precisions
from .trt import DEVICE_PROFILES, TRT_VERSIONS, TrtConfig, run_trt

DEFAULT_PRECISIONS = "fp32,fp16,int8"

TARGETS = ("checkpoint", "onnx", "trt")


@dataclass(frozen=True)
class ExportConfig:
    """Everything one run will do, decided before any work starts."""

    target: str
    model: str
    out: str
    base: str | None
    vision_keys: str
    use_thumbnail: bool
    force: bool

    @property
    def is_preset(self) -> bool:
        return self.model in PRESETS and not Path(self.model).is_dir()


def parse_args(argv: list[str] | None = None) -> tuple[ExportConfig | OnnxConfig | TrtConfig, bool]:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=TARGETS, required=True, help="what to produce")
    p.add_argument(
        "--model",
        default=None,
        help=f"a preset ({', '.join(sorted(PRESETS))}; random weights) or a ColLFM2 checkpoint directory "
        f"(default: {DEFAULT_PRESET})",
    )
    p.add_argument("--out", help="output directory (checkpoint, onnx)")
    p.add_argument("--base", help="local LFM2-VL base directory (architecture, and base weights if needed)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    ck = p.add_argument_group("--target checkpoint")
    ck.add_argument(
        "--vision-keys",
        choices=("4.57", "5.x"),
        default="4.57",
        help="vision tensor naming to write: 4.57 (vision_model.*, as published) or 5.x",
    )
    ck.add_argument("--no-thumbnail", action="store_true", help="presets: write use_thumbnail=false")
    ox = p.add_argument_group("--target onnx")
    ox.add_argument(
        "--precision",
        default=DEFAULT_PRECISIONS,
        help=f"onnx: comma-separated, from {', '.join(x.value for x in Precision)} (default: {DEFAULT_PRECISIONS}); "
        "the first is the bundle's default; int8-qdq is the TensorRT int8 input. trt: fp16 or int8",
    )
    ox.add_argument(
        "--validate",
        action="store_true",
        help="onnx: check every graph and the pipeline against "
        "PyTorch; trt: check every engine against ONNX Runtime fp32 and refuse one that fails",
    )
    ox.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 18 (default {DEFAULT_OPSET})")
    ox.add_argument("--no-openvino-gate", action="store_true",
                    help="onnx: skip gating OpenVINO's precisions (done when it is installed; ~1 min)")  # fmt: skip
    tr = p.add_argument_group("--target trt")
    tr.add_argument("--bundle", help="ONNX bundle to build engines from (engines go to BUNDLE/trt/PROFILE-PRECISION/)")
    tr.add_argument("--profile", choices=sorted(DEVICE_PROFILES), default="orin-nano", help="device profile")
    tr.add_argument("--workspace", type=int, help="builder workspace in MB (default: the profile's)")
    tr.add_argument("--timing-cache", help="TensorRT timing cache file (read and updated)")
    tr.add_argument(
        "--trt-version",
        action="append",
        choices=sorted(TRT_VERSIONS),
        help="TensorRT release(s) to plan and pre-flight for, each with its build path (default: all known); "
        "a real build always uses the installed one",
    )
    a = p.parse_args(argv)
    model_given = a.model is not None
    if a.target == "trt":
        if a.precision == DEFAULT_PRECISIONS:
            a.precision = "fp16"
        if a.precision not in ("fp16", "int8"):
            p.error("--target trt: --precision must be fp16 or int8")
        versions = tuple(a.trt_version) if a.trt_version else tuple(TRT_VERSIONS)
        if not a.bundle:
            if not (model_given and a.out):
                p.error("--target trt needs --bundle DIR, or --model M --out DIR to export the bundle first")
            # Export the graphs the engines need, then build: fp16 engines come from the fp32 graphs
            # (TensorRT 8.x) or the fp16 ones (10.x, 11.x), int8 engines from int8-qdq; fp32 is
            # also the reference --validate compares the engines with.
            source = "fp32,fp16" if a.precision == "fp16" else "fp32,int8-qdq"
            onnx_cfg = OnnxConfig(a.model, a.out, parse_precisions(source), False, a.base, a.opset, a.force)
            cfg = TrtConfig(a.out, a.precision, a.profile, a.workspace, a.timing_cache, versions, onnx_cfg,
                            a.validate)  # fmt: skip
            return cfg, a.dry_run
        return TrtConfig(a.bundle, a.precision, a.profile, a.workspace, a.timing_cache, versions,
                         validate=a.validate), a.dry_run  # fmt: skip
    if not a.out:
        p.error("--out is required")
    if a.model is None:
        print(f"[export] no --model given: using the {DEFAULT_PRESET!r} preset (RANDOM weights)", flush=True)
        a.model = DEFAULT_PRESET
    if a.target == "onnx":
        try:
            precisions = parse_precisions(a.precision)
        except ValueError as exc:
            p.error(str(exc))
        if a.opset < 18:
            p.error("--opset must be >= 18 (LayerNormalization and the exporter's decompositions need it)")
        return OnnxConfig(a.model, a.out, precisions, a.validate, a.base, a.opset, a.force,
                          openvino=not a.no_openvino_gate), a.dry_run  # fmt: skip
    cfg = ExportConfig(a.target, a.model, a.out, a.base, a.vision_keys, not a.no_thumbnail, a.force)
    return cfg, a.dry_run


def plan(cfg: ExportConfig) -> list[str]:
    source = f"preset '{cfg.model}' ({PRESETS[cfg.model].description})" if cfg.is_preset else f"checkpoint {cfg.model}"
    steps = [f"load   {source}"]
    if cfg.base:
        steps.append(f"base   {cfg.base}")
    steps.append(f"write  {cfg.out} (published ColLFM2 layout, bf16, vision keys {cfg.vision_keys})")
    return steps


def run(cfg: ExportConfig) -> Path:
    from .checkpoint import load_for_writing, save_checkpoint

    out = Path(cfg.out)
    loaded = load_for_writing(cfg.model, cfg.base, out, cfg.force, "checkpoint", _step)
    t1 = time.perf_counter()
    _step(f"writing {out} ...")
    save_checkpoint(
        loaded.model,
        out,
        base_model=loaded.base_model,
        vision_keys=cfg.vision_keys,
        tokenizer_dir=None if cfg.is_preset else cfg.model,
        use_thumbnail=cfg.use_thumbnail,
        overwrite=True,
        # Random weights stay labelled as such through any number of re-writes.
        provenance={"preset": loaded.preset, "random_weights": True} if loaded.random_weights else None,
    )
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    _step(f"wrote {out} ({size:.0f} MB) in {time.perf_counter() - t1:.1f}s")
    return out


def _step(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    cfg, dry_run = parse_args(argv)
    if isinstance(cfg, TrtConfig):
        try:
            if cfg.export is not None:
                from .onnx_export import run as run_onnx

                if dry_run:
                    for line in onnx_plan(cfg.export):
                        print(f"  {line}")
                    print("  then: engine plan and TensorRT pre-flight on the exported graphs (run with --bundle "
                          f"{cfg.bundle} --dry-run after the export to see them)")  # fmt: skip
                    print("(dry run: nothing written)")
                    return 0
                run_onnx(cfg.export, _step)
            return run_trt(cfg, dry_run, _step)
        except (UserError, ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    is_onnx = isinstance(cfg, OnnxConfig)
    if dry_run:
        print(json.dumps(asdict(cfg), indent=2, default=str))
        for line in onnx_plan(cfg) if is_onnx else plan(cfg):
            print(f"  {line}")
        print("(dry run: nothing written)")
        return 0
    try:
        if is_onnx:
            from .onnx_export import run as run_onnx

            _, passed = run_onnx(cfg, _step)
            if not passed:
                _step("VALIDATION FAILED: see the lines marked FAIL above and manifest.json")
                return 1
        else:
            run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
