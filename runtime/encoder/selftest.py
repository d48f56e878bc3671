"""``python -m runtime selftest``: measure a bundle's fidelity on the machine that will run it.

The export gate measures each candidate on the export machine. What a device computes depends
on its own kernels (int8 GEMMs differ by CPU class; a GPU provider or TensorRT engine differs
again), so every bundle carries a probe (``selftest/``: two PNG pages and three queries, with
the PyTorch fp32 reference's embeddings of them) and this module re-runs it here, through the
same preprocessing and graphs a search uses, judged by the gate the manifest records.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import open_bundle
from ..cpu import cpu_class
from ..errors import ModelFilesError
from ..parity import Gate, fidelity_report
from .defaults import choose, engine_for
from .runner import engine

__all__ = ["selftest"]


def selftest(
    bundle_dir: str | os.PathLike,
    precisions: list[str] | None = None,
    backend: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the bundle's probe in each of ``precisions`` (default: all it has) on ``backend``.

    ``backend`` None: this machine's default engine. Returns ``{"cpu_class", "machine", "backend",
    "default", "results": {precision: report}, "passed"}``
    where each report is ``parity.fidelity_report``'s (pages, queries, MaxSim, failures).
    """
    from ..preprocess.processor import ColLFM2Processor
    from .model import ColLFM2

    kind, row = choose()
    backend = backend or engine_for(None)
    bundle = open_bundle(Path(bundle_dir), verify=False)
    probe = bundle.manifest.get("selftest")
    if not isinstance(probe, dict) or not probe.get("pages") or not probe.get("reference"):
        raise ModelFilesError(f"{bundle.path}: this bundle carries no selftest probe; re-export it")
    bundle.verify_files([*probe["pages"], probe["reference"]])
    with np.load(bundle.file(probe["reference"]), allow_pickle=False) as ref:
        ref_pages = [ref[f"page_{i}"] for i in range(len(probe["pages"]))]
        ref_queries = [ref[f"query_{i}"] for i in range(len(probe["queries"]))]
    proc = ColLFM2Processor.from_pretrained(bundle.path)
    pages_in = proc.process_images([str(bundle.file(p)) for p in probe["pages"]])
    queries_in = proc.process_queries(list(probe["queries"]))
    results = {}
    if not precisions and engine(backend).module == "ov":
        from .ov import offered

        precisions = offered(engine(backend), bundle.precisions)
    for name in precisions or bundle.precisions:
        model = ColLFM2.from_pretrained(bundle.path, precision=name, threads=threads, backend=backend)
        pages, queries = model.encode_rows(pages_in), model.encode_rows(queries_in)
        gate = Gate.from_dict(model.gate or {"min_worst_cos": 1.0})
        results[name] = {**fidelity_report(ref_pages, ref_queries, pages, queries, gate), "gate": str(gate)}
    return {
        "cpu_class": cpu_class(),
        "machine": platform.machine(),
        "backend": backend,
        # What this machine runs when the user names no engine and no precision, and why.
        "default": {
            "cpu_kind": kind,
            "engine": row.engine,
            "precision": row.precision,
            "why": row.why,
            "measured": row.measured,
        },
        "results": results,
        "passed": all(r["passed"] for r in results.values()),
    }


def format_report(report: dict[str, Any]) -> list[str]:
    """Readable lines: one per precision, then the verdict."""
    lines = [f"selftest on {report['machine']} ({report['cpu_class']}), backend {report['backend']}:"]
    for name, r in report["results"].items():
        verdict = "PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(
            f"  {name:<9} pages cos mean={r['pages']['mean_cos']:.6f} worst={r['pages']['worst_cos']:.6f}"
            f" | queries mean={r['queries']['mean_cos']:.6f} worst={r['queries']['worst_cos']:.6f}"
            f" | MaxSim rel. error {r['maxsim_rel_error']:.1e} | {verdict}"
        )
    lines.append("all precisions pass their gates" if report["passed"] else "SOME PRECISIONS FAIL THEIR GATES")
    d = report.get("default")
    if d:
        where = f"; measured: {d['measured']}" if d["measured"] else ""
        precision = f" --precision {d['precision']}" if d["precision"] else ""
        lines.append(f"default on this CPU ({d['cpu_kind']}): --engine {d['engine']}{precision} ({d['why']}{where})")
    return lines
