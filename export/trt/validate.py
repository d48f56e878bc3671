"""``--target trt --validate``: every engine against ONNX Runtime fp32 on the validation grid.

Runs where the engines were built (a Jetson has no torch): the reference is the bundle's fp32
graphs under ONNX Runtime's CPU provider, which ``--validate`` of the ONNX export already held
to the PyTorch model. Each engine gets the same inputs as its fp32 graph (the vision engine the
grid's tiles at their patch-count buckets, the text engine the merged page sequences and the
left-padded queries), and the two outputs are compared with ``export.parity.compare`` and judged
by the precision's gate: fp16 engines by fp16's, int8 engines by int8-qdq's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime import ColLFM2, ColLFM2Processor, open_bundle
from runtime.encoder.model import merge_image_tokens

from ..grid import validation_inputs
from ..parity import compare
from ..recipes import GATES, Precision

__all__ = ["compare_engines", "validate_engine_set"]

_GATE_OF = {"fp16": Precision.FP16, "int8": Precision.INT8_QDQ}


def compare_engines(bundle_dir: Path, engines: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """Fidelity of ``engines`` (graph -> ``Runner``, ``run(feeds)``) against ORT fp32."""
    bundle = open_bundle(bundle_dir, "fp32")
    ref = ColLFM2(bundle, "fp32")
    cand = ColLFM2(bundle, "fp32", vision_batch=4)
    cand.runners = {**cand.runners, **engines}
    proc = ColLFM2Processor.from_pretrained(bundle_dir)
    pages, queries = validation_inputs(proc)
    vis_ref, vis_got, txt_ref, txt_got = [], [], [], []
    batches = [proc.process_images([img]) for img in pages.values()]
    for b in batches:
        tokens = ref.image_tokens(b["pixel_values"], b["pixel_attention_mask"], b["spatial_shapes"])
        vis_ref.append(tokens)
        vis_got.append(cand.image_tokens(b["pixel_values"], b["pixel_attention_mask"], b["spatial_shapes"]))
        embeds = merge_image_tokens(ref.embed_tokens(b["input_ids"]), b["input_ids"], tokens, ref.image_token_id)
        _text_pair(ref, cand, embeds, b["attention_mask"], txt_ref, txt_got)
    qb = proc.process_queries(queries)
    _text_pair(ref, cand, ref.embed_tokens(qb["input_ids"]), qb["attention_mask"], txt_ref, txt_got)
    gate = GATES[_GATE_OF[precision]]
    report: dict[str, Any] = {"reference": "ONNX Runtime fp32 (CPU) on the validation grid", "gate": str(gate)}
    failures = []
    for graph, refs, gots in (("vision", vis_ref, vis_got), ("text", txt_ref, txt_got)):
        fid = compare(refs, gots)
        report[graph] = fid.as_dict()
        failures += [f"{graph}: {f}" for f in gate.failures(fid.mean_cos, fid.worst_cos, fid.max_abs, False)]
    report.update(passed=not failures, failures=failures)
    return report


def _text_pair(ref: ColLFM2, cand: ColLFM2, embeds: np.ndarray, mask: np.ndarray, refs: list, gots: list) -> None:
    keep = np.asarray(mask) > 0
    refs.append(ref.text(embeds, mask)[keep])
    gots.append(cand.text(embeds, mask)[keep])


def validate_engine_set(bundle_dir: Path, out_dir: Path, meta: dict[str, Any], log: Callable[[str], None]) -> dict:
    """Load the engines just built in ``out_dir`` and compare them; the report goes into engines.json."""
    from runtime.encoder.trt import TrtEngine

    engines = {m["graph"]: TrtEngine(out_dir / m["file"], m["sha256"]) for m in meta["engines"]}
    try:
        report = compare_engines(bundle_dir, engines, meta["precision"])
    finally:
        for e in engines.values():
            e.close()
    for graph in ("vision", "text"):
        f = report[graph]
        log(f"validate {graph}.engine vs ORT fp32: cos mean={f['mean_cos']:.6f} worst={f['worst_cos']:.6f} "
            f"max-abs={f['max_abs']:.2e}")  # fmt: skip
    log("validate: " + ("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"])))
    return report
