"""``--target onnx``: load -> wrap -> export -> convert/quantise (gated) -> validate -> package.

Each step is a function; ``run`` strings them together for the CLI. The bundle is built in a
temp dir beside ``--out`` and renamed into place at the end (``checkpoint.atomic_dir``), with
``manifest.json`` written last, so an interrupted export never leaves something that looks like
a bundle.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle.contract import GRAPH_SPECS
from runtime.bundle.manifest import BUNDLE_FORMAT, MANIFEST, SCHEMA_VERSION, Bundle, sha256_file

from .presets import PRESETS
from .recipes import METHODS, RECIPES, Precision

__all__ = ["GRAPHS", "OnnxConfig", "export_graph", "io_spec", "plan", "run"]

GRAPHS = ("vision", "text")
DEFAULT_OPSET = 18
Log = Callable[[str], None]


@dataclass(frozen=True)
class OnnxConfig:
    model: str
    out: str
    precisions: tuple[Precision, ...]
    validate: bool = False
    base: str | None = None
    opset: int = DEFAULT_OPSET
    force: bool = False
    # Gate OpenVINO's precisions too (export.ov_gate) when it is installed and a reference is computed.
    openvino: bool = True

    @property
    def is_preset(self) -> bool:
        return self.model in PRESETS and not Path(self.model).is_dir()

    @property
    def needs_reference(self) -> bool:
        """The int8 gate and OpenVINO's gate need reference outputs even without --validate."""
        from .ov_gate import available

        return (self.validate or any(len(RECIPES[p].methods) > 1 for p in self.precisions)
                or (self.openvino and available()))  # fmt: skip


def plan(cfg: OnnxConfig) -> list[str]:
    src = f"preset '{cfg.model}' ({PRESETS[cfg.model].description})" if cfg.is_preset else f"checkpoint {cfg.model}"
    steps = [f"load      {src}"]
    steps.append(f"export    vision, text -> ONNX fp32, opset {cfg.opset} (torch.onnx dynamo exporter)")
    if cfg.needs_reference:
        steps.append("reference PyTorch outputs on the validation grid (512x512, 26x36 tile, A4 tiled, queries 1-64)")
    for p in cfg.precisions:
        r = RECIPES[p]
        methods = " -> ".join(r.methods)
        gate = f"gate {r.gate}" if len(r.methods) > 1 else ""
        steps.append(f"{p.value:<9} {methods} (table {r.embeddings_dtype}; for {r.target}) {gate}".rstrip())
    from .ov_gate import available

    if cfg.openvino and available():
        steps.append(
            "openvino  write OpenVINO's own weight-only int8 graphs where the bundle lacks them, "
            "and gate each precision OpenVINO offers on this CPU on the same grid (--no-openvino-gate)"
        )
    if cfg.validate:
        steps.append("validate  every graph and the whole ORT pipeline against the reference")
    steps.append(f"package   {cfg.out} (manifest.json with sha256 of every file; atomic rename)")
    return steps


# ---------------------------------------------------------------------------------------------
# Steps


def export_graph(name: str, module: Any, example: tuple, dst: Path, opset: int) -> Path:
    """torch module -> ONNX file with the names and named dynamic axes of its ``GraphSpec``."""
    import torch

    from runtime.bundle.contract import GRAPH_SPECS

    spec = GRAPH_SPECS[name]
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Known noise from torch 2.13's exporter: a pytree deprecation inside torch itself, and a note
        # that axes sharing a name share a symbol (which is the point of naming them).
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        torch.onnx.export(
            module,
            example,
            str(dst),
            dynamo=True,
            opset_version=opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_axes(),
            external_data=False,
            verbose=False,
            report=False,
        )
    return dst


def _examples(numbers: dict[str, Any]) -> dict[str, tuple]:
    """Trace inputs from each graph's contract (docs/reference.md §6.5: no axis may specialise)."""
    import torch

    from runtime.bundle.contract import GRAPH_SPECS

    return {g: tuple(torch.from_numpy(a) for a in spec.example(numbers)) for g, spec in GRAPH_SPECS.items()}


def io_spec(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file: name, dtype, shape with named dynamic axes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def one(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": dims}

    return {"inputs": [one(v) for v in model.graph.input], "outputs": [one(v) for v in model.graph.output]}


def _source(cfg: OnnxConfig, loaded: Any) -> dict[str, Any]:
    if cfg.is_preset:
        return {"kind": "preset", "preset": cfg.model, "seed": PRESETS[cfg.model].seed, "random_weights": True}
    weights = Path(cfg.model) / "model.safetensors"
    return {
        "kind": "checkpoint",
        "path": str(Path(cfg.model).resolve()),
        "weights_sha256": sha256_file(weights) if weights.is_file() else None,
        "random_weights": loaded.random_weights,
        "preset": loaded.preset,
        "base": loaded.base.location if loaded.base else None,
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import runtime

    return {
        "collfm2_edge": runtime.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _host() -> dict[str, str]:
    from runtime.cpu import cpu_class, cpu_name

    return {"cpu_class": cpu_class(), "machine": platform.machine(), "cpu": cpu_name()}


def _calibration_feeds(model: Any, processor: Any) -> dict[str, list[dict[str, np.ndarray]]]:
    from .validate import calibration_inputs, reference_set

    pages, queries = calibration_inputs(processor)
    ref = reference_set(model, processor, pages, queries, full_pipeline=False, text_outputs=False)
    return {"vision": [c.feeds for c in ref.vision], "text": [c.feeds for c in ref.text]}


def build_precision(
    precision: Precision,
    fp32_graphs: dict[str, Path],
    out_dir: Path,
    reference: Any | None,
    calibration: Callable[[], dict[str, list[dict[str, np.ndarray]]]],
    log: Log,
) -> dict[str, dict[str, Any]]:
    """Write ``out_dir/{vision,text}.onnx`` for ``precision``; the gate picks each graph's method."""
    from .quantize import apply_method
    from .validate import graph_fidelity, load_session

    recipe = RECIPES[precision]
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    for graph in GRAPHS:
        dst = out_dir / f"{graph}.onnx"
        tried = []
        for i, method in enumerate(recipe.methods):
            last = i == len(recipe.methods) - 1
            t0 = time.perf_counter()
            feeds = calibration()[graph] if method == "static-qdq" else None
            cand = dst if len(recipe.methods) == 1 else out_dir / f".{graph}.{method}.onnx"
            apply_method(method, fp32_graphs[graph], cand, feeds)
            record: dict[str, Any] = {"method": method, "what": METHODS[method]}
            if reference is not None:
                session = load_session(cand, session_config=recipe.session_config)
                fid, per_case = graph_fidelity(session, getattr(reference, graph))
                del session
                failures = recipe.gate.failures(fid.mean_cos, fid.worst_cos, fid.max_abs, unit_norm=graph == "text")
                record.update(fidelity=fid.as_dict(), cases={k: v.as_dict() for k, v in per_case.items()})
                record.update(passed=not failures, failures=failures)
                log(f"  {precision.value}/{graph}: {method:<16} {fid}  {'PASS' if not failures else 'FAIL'}"
                    f"  ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
            else:
                log(f"  {precision.value}/{graph}: {method} ({time.perf_counter() - t0:.1f}s)")
            tried.append({k: record[k] for k in ("method", "passed", "failures") if k in record})
            if record.get("passed", True) or last:
                if cand != dst:
                    os.replace(cand, dst)
                if len(recipe.methods) > 1:
                    if record.get("passed"):
                        why = f"{method}: first candidate to pass the gate ({recipe.gate})"
                    else:
                        why = f"{method}: no candidate passed the gate ({recipe.gate}); kept the last, marked failing"
                    if i > 0:
                        why += f"; rejected {', '.join(t['method'] for t in tried[:-1])}"
                    record["why"] = why
                    record["tried"] = tried
                records[graph] = record
                break
            cand.unlink()
    for stale in out_dir.glob(".*.onnx"):
        stale.unlink()
    return records


def _write_embeddings(model: Any, dst: Path, dtype: str) -> dict[str, Any]:
    table = model.model.language_model.embed_tokens.weight.detach().float().cpu().numpy().astype(dtype)
    np.save(dst, table, allow_pickle=False)
    return {"dtype": dtype, "shape": list(table.shape)}


def _summary(rec: dict[str, Any]) -> str:
    verdict = "PASS" if rec["passed"] else "FAIL: " + "; ".join(rec["failures"])
    return (
        f"pages cos mean={rec['pages']['mean_cos']:.6f} worst={rec['pages']['worst_cos']:.6f}"
        f" | queries worst={rec['queries']['worst_cos']:.6f} | MaxSim rel err={rec['maxsim_rel_error']:.1e}"
        f" | top-5 {rec['top5_agreement']:.2f} | {verdict}"
    )


def run(cfg: OnnxConfig, log: Log) -> tuple[Path, bool]:
    """Export, gate, validate and package. Returns (bundle path, all validations passed)."""
    from .checkpoint import atomic_dir, load_for_writing, write_processor_files
    from .graphs import EXPORT_ATTENTION, MASK_VALUE, TextGraph, VisionGraph, attention

    out = Path(cfg.out)
    t_start = time.perf_counter()
    loaded = load_for_writing(cfg.model, cfg.base, out, cfg.force, "bundle", log)
    model = loaded.model.float().eval()
    timings: dict[str, float] = {"load": time.perf_counter() - t_start}
    all_passed = True
    with atomic_dir(out) as tmp:
        write_processor_files(tmp, None if cfg.is_preset else cfg.model)
        from runtime import ColLFM2Processor

        processor = ColLFM2Processor.from_pretrained(tmp)
        work = tmp / ".work"
        work.mkdir()

        t0 = time.perf_counter()
        fp32_graphs: dict[str, Path] = {}
        from .validate import model_numbers

        numbers = model_numbers(model, processor)
        examples = _examples(numbers)
        with attention(model, EXPORT_ATTENTION):
            for graph, wrapper in (("vision", VisionGraph), ("text", TextGraph)):
                log(f"exporting {graph} graph (fp32, opset {cfg.opset}) ...")
                fp32_graphs[graph] = export_graph(
                    graph, wrapper(model).eval(), examples[graph], work / f"{graph}.onnx", cfg.opset
                )
        timings["export"] = time.perf_counter() - t0
        log(f"exported in {timings['export']:.1f}s")

        reference = None
        if cfg.needs_reference:
            from .validate import reference_set, validation_inputs

            log("computing PyTorch reference outputs on the validation grid ...")
            pages, queries = validation_inputs(processor)
            reference = reference_set(model, processor, pages, queries, full_pipeline=cfg.validate)
            timings["reference"] = reference.seconds
            log(f"reference in {reference.seconds:.1f}s")

        calib_cache: dict[str, Any] = {}

        def calibration() -> dict[str, list[dict[str, np.ndarray]]]:
            if "feeds" not in calib_cache:
                log("  computing calibration inputs (sample pages and queries, not the validation grid) ...")
                calib_cache["feeds"] = _calibration_feeds(model, processor)
            return calib_cache["feeds"]

        precisions: dict[str, Any] = {}
        for p in cfg.precisions:
            t0 = time.perf_counter()
            recipe = RECIPES[p]
            log(f"building {p.value} ({' -> '.join(recipe.methods)}) ...")
            records = build_precision(p, fp32_graphs, tmp / p.value, reference, calibration, log)
            emb = _write_embeddings(model, tmp / p.value / "embeddings.npy", recipe.embeddings_dtype)
            graphs = {}
            for graph, record in records.items():
                rel = f"{p.value}/{graph}.onnx"
                graphs[graph] = {"file": rel, **io_spec(tmp / rel), **record}
            entry = {
                "target": recipe.target,
                "methods": list(recipe.methods),
                "gate": {k: v for k, v in vars(recipe.gate).items() if v is not None},
                # Where the gate measured the candidates: the int8 recipes compute the same numbers
                # on every CPU class (docs/cpu-classes.md), and `python -m runtime selftest`
                # re-measures on the device itself.
                "gated_on": _host() if reference is not None else None,
                "session_config": dict(recipe.session_config),
                "graphs": graphs,
                "embeddings": {"file": f"{p.value}/embeddings.npy", **emb},
                "size_bytes": sum(f.stat().st_size for f in (tmp / p.value).iterdir()),
            }
            precisions[p.value] = entry
            timings[p.value] = time.perf_counter() - t0
            if any(r.get("passed") is False for r in records.values()):
                all_passed = False
        openvino_gates: dict[str, Any] = {}
        from .ov_gate import available, gate_openvino

        if reference is not None and cfg.openvino and available():
            t0 = time.perf_counter()
            log("gating OpenVINO's precisions on the same grid ...")
            openvino_gates = gate_openvino(tmp, precisions, reference, log)
            timings["openvino"] = time.perf_counter() - t0
        from .validate import write_selftest_probe

        selftest = write_selftest_probe(model, processor, tmp / "selftest")
        files = {str(f.relative_to(tmp)): "" for f in sorted(tmp.rglob("*")) if f.is_file() and ".work" not in f.parts}
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": _source(cfg, loaded),
            "model": numbers,
            # What each graph takes and gives; the runtime feeds by these names (runtime.bundle.contract).
            "contract": {g: spec.as_manifest() for g, spec in GRAPH_SPECS.items()},
            "opset": cfg.opset,
            "mask_value": MASK_VALUE,
            "default_precision": cfg.precisions[0].value,
            "precisions": precisions,
            "processor": {
                "preprocess": {k: v for k, v in vars(processor.config).items()},
                "tokenizer": "tokenizer.json",
                "files": [f for f in files if "/" not in f],
            },
            "selftest": selftest,
            **({"openvino": openvino_gates} if openvino_gates else {}),
            "versions": _versions(),
            "timings_s": timings,
            "files": {},
        }
        if cfg.validate:
            from .validate import pipeline_report

            report = {}
            for p in cfg.precisions:
                t0 = time.perf_counter()
                bundle = Bundle(tmp, manifest)
                from runtime import ColLFM2

                rt = ColLFM2(bundle, p.value)
                rec = {**pipeline_report(rt, reference, RECIPES[p].gate), "host": _host()}
                report[p.value] = rec
                all_passed &= rec["passed"]
                log(f"validate {p.value}: {_summary(rec)} ({time.perf_counter() - t0:.1f}s)")
            manifest["validation"] = {"pipeline": report, "passed": all_passed}
        shutil.rmtree(work)
        manifest["files"] = {rel: sha256_file(tmp / rel) for rel in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    timings["total"] = time.perf_counter() - t_start
    sizes = ", ".join(f"{k} {v['size_bytes'] / 1e6:.0f} MB" for k, v in precisions.items())
    own = sum(f.stat().st_size for f in (out / "openvino").glob("*")) if (out / "openvino").is_dir() else 0
    sizes += f", OpenVINO's own graphs {own / 1e6:.0f} MB" if own else ""
    log(f"wrote {out} ({sizes}) in {timings['total']:.1f}s")
    return out, all_passed
