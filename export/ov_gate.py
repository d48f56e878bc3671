"""OpenVINO's precisions measured at export, as the ONNX precisions are.

Each precision ``runtime.encoder.ov`` offers on this machine is compiled as the runtime compiles
it (same files, same inference hint per graph), run on the validation grid, and judged per graph
by its gate (fp32: worst cosine >= 0.99999; bf16, int8: the reduced-precision gate). The bundle
manifest records the result under ``openvino``, with the CPU it was measured on; the runtime
refuses a precision recorded as failing, and ``python -m runtime selftest --engine ov-cpu``
re-measures on the device. Precisions this CPU cannot run natively (bf16 without AVX512_BF16)
are left unmeasured, not failed.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runtime.encoder.defaults import openvino_installed as available

__all__ = ["available", "gate_openvino"]


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

    out: dict[str, Any] = {}
    for name in ov.offered(ENGINES["ov-cpu"], list(precisions)):
        plan = ov.PRECISIONS[name]
        graphs: dict[str, Any] = {}
        for graph, source in plan.files.items():
            rel = precisions[source]["graphs"][graph]["file"]
            hint = plan.hint(graph)
            # No compile cache: the exporter's graphs are new, and a cache is the device's.
            runner = ov.OvRunner(ov.compile_graph(bundle_dir / rel, "CPU", hint, None, cache=False))
            fid, _ = graph_fidelity(_AsSession(runner), getattr(reference, graph))
            del runner
            failures = plan.gate.failures(fid.mean_cos, fid.worst_cos, fid.max_abs, unit_norm=graph == "text")
            graphs[graph] = {"file": rel, "hint": hint, "fidelity": fid.as_dict(), "passed": not failures,
                             "failures": failures}  # fmt: skip
            log(f"  openvino {name}/{graph}: {rel} ({hint}) {fid}  {'PASS' if not failures else 'FAIL'}")
        out[name] = {
            "recorded_as": plan.recorded,
            "gate": {k: v for k, v in asdict(plan.gate).items() if v is not None},
            "graphs": graphs,
            "passed": all(g["passed"] for g in graphs.values()),
            "measured_on": cpu_kind(),
            "openvino": openvino.__version__,
        }
    return out
