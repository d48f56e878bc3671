"""OpenVINO's precisions measured at export, as the ONNX precisions are.

Each precision ``runtime.encoder.ov`` offers on this machine is compiled as the runtime compiles
it (same files, same inference hint per graph), run on the validation grid, and judged per graph
by its gate (fp32: worst cosine >= 0.99999; bf16, int8: the reduced-precision gate). The bundle
manifest records the result under ``openvino``, with the CPU it was measured on; the runtime
refuses a precision recorded as failing, and ``python -m runtime selftest --engine ov-cpu``
re-measures on the device. Precisions this CPU cannot run natively (bf16 without AVX512_BF16)
are left unmeasured, not failed.

A precision's own graphs (``OvPrecision.own``: int8's weight-only graphs) are written here first,
under ``openvino/``, unless the bundle's graph they would replace was made by the same method
(then it is used as it is). One that fails its gate is deleted and the graph it replaced is
gated instead, as the ONNX recipes fall back per graph; the runtime uses an own file only where
the manifest lists it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runtime.encoder.defaults import openvino_installed as available

__all__ = ["available", "gate_openvino", "write_own_graph"]


class _AsSession:
    """An ``OvRunner`` called like the ORT session ``graph_fidelity`` expects."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.runner.run(feeds)


def gate_openvino(bundle_dir: Path, precisions: dict[str, Any], reference: Any, log: Any) -> dict[str, Any]:
    """``{precision: record}`` for every OpenVINO precision this CPU offers with these graphs."""
    import openvino

    from runtime.encoder import ov
    from runtime.encoder.defaults import cpu_kind
    from runtime.encoder.runner import ENGINES

    from .validate import graph_fidelity

    def measure(plan: Any, graph: str, rel: str, hint: str) -> dict[str, Any]:
        # No compile cache: the exporter's graphs are new, and a cache is the device's.
        runner = ov.OvRunner(ov.compile_graph(bundle_dir / rel, "CPU", hint, None, cache=False))
        fid, _ = graph_fidelity(_AsSession(runner), getattr(reference, graph))
        del runner
        failures = plan.gate.failures(fid.mean_cos, fid.worst_cos, fid.max_abs, unit_norm=graph == "text")
        log(f"  openvino {plan.name}/{graph}: {rel} ({hint}) {fid}  {'PASS' if not failures else 'FAIL'}")
        return {"file": rel, "hint": hint, "fidelity": fid.as_dict(), "passed": not failures, "failures": failures}

    out: dict[str, Any] = {}
    for name in ov.offered(ENGINES["ov-cpu"], list(precisions)):
        plan = ov.PRECISIONS[name]
        graphs: dict[str, Any] = {}
        for graph, source in plan.files.items():
            own = plan.own.get(graph)
            made = precisions[source]["graphs"][graph].get("method")
            replaced = (precisions[source]["graphs"][graph]["file"], plan.hint(graph))  # what runs without it
            if own is not None and own.source in precisions and made != own.method:
                try:
                    write_own_graph(bundle_dir, own, precisions[own.source]["graphs"][graph]["file"], log)
                    graphs[graph] = {**measure(plan, graph, own.file, own.hint), "method": own.method}
                except Exception as exc:  # a quantiser or compiler error: the graph it replaces still runs
                    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                    graphs[graph] = {"file": own.file, "method": own.method, "passed": False, "failures": [reason]}
                if graphs[graph]["passed"]:
                    continue
                log(f"  openvino {name}/{graph}: its own graph failed ({'; '.join(graphs[graph]['failures'])}); "
                    f"falling back to the {source} graph")  # fmt: skip
                (bundle_dir / own.file).unlink(missing_ok=True)
                rejected = graphs[graph]
                graphs[graph] = {**measure(plan, graph, *replaced), "rejected": rejected}
                continue
            graphs[graph] = measure(plan, graph, *replaced)
        out[name] = {
            "recorded_as": plan.recorded,
            "gate": {k: v for k, v in asdict(plan.gate).items() if v is not None},
            "graphs": graphs,
            "passed": all(g["passed"] for g in graphs.values()),
            "measured_on": cpu_kind(),
            "openvino": openvino.__version__,
        }
    return out


def write_own_graph(bundle_dir: Path, own: Any, source_rel: str, log: Any) -> None:
    """``own.method`` applied to the bundle's ``source_rel`` graph, written to ``own.file``."""
    from .quantize import apply_method

    dst = bundle_dir / own.file
    dst.parent.mkdir(parents=True, exist_ok=True)
    log(f"  openvino: writing {own.file} ({own.method} of {source_rel}) ...")
    apply_method(own.method, bundle_dir / source_rel, dst)
