"""``python -m benchmarks``: per-stage latency of PyTorch eager and the ONNX bundle, side by side.

One run measures, on this machine and in this process:

* the fp32 GEMM peak (ONNX Runtime MatMul, 2048^3) and a STREAM-like copy bandwidth, so that every
  figure can be read as a fraction of what the hardware gave in the same minute;
* decode + preprocess (our numpy processor; backend-independent);
* per backend (PyTorch eager fp32, and bf16 where the CPU has bf16 instructions; ORT CPU for each
  precision of the bundle; OpenVINO CPU for each precision it offers here; CUDA when present):
  vision graph, embedding lookup + merge, text graph, end-to-end page, and query encode, as
  p50/p95/mean over ``--runs`` after ``--warmup``;
* MaxSim over ``--maxsim-pages`` synthetic pages x 266 rows (ours, upstream sauerkrautlm-colpali's torch
  ``score_multi_vector``, a naive loop) and an index search over the same pages;
* fidelity next to speed: mean/worst cosine and top-5 agreement of each ORT precision against
  eager fp32, from ``export.parity``.

Every stage is also reported as a ratio to PyTorch eager fp32 measured in the same run, and
compute-bound stages as a fraction of the measured GEMM peak (FLOPs counted from the graphs).
Writes ``NAME.json``, ``NAME.md`` and (with matplotlib) ``NAME.png`` under ``--out-dir``.

    python -m benchmarks [--model random|tiny|CKPT] [--bundle DIR] [--runs 3] [--threads 2] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.hardware import copy_bandwidth, gemm_peaks, machine, read_bandwidth
from benchmarks.report import markdown, ratios, write_results
from benchmarks.stages import (
    PAGES,
    QUERY_TOKENS,
    eager_stages,
    fidelity,
    inputs,
    maxsim_bench,
    ort_stages,
    throughput,
)
from benchmarks.timing import timeit

SCHEMA = "collfm2-edge-benchmark/1"


def want_bf16(mode: str, cpu_has_bf16: bool) -> bool:
    """Whether to measure PyTorch eager bf16: ``on`` always, ``off`` never, ``auto`` where the CPU has it."""
    return mode == "on" or (mode == "auto" and cpu_has_bf16)


def run(a: argparse.Namespace) -> dict[str, Any]:
    from export._compat import patch_torchvision

    patch_torchvision()
    import torch

    torch.set_num_threads(a.threads)
    from export.checkpoint import load_model
    from export.flops import stage_flops
    from runtime import ColLFM2, ColLFM2Processor

    tmp = Path(tempfile.mkdtemp(prefix="collfm2-bench-"))
    bundle = Path(a.bundle) if a.bundle else None
    if bundle is None:
        from export.onnx_export import OnnxConfig
        from export.onnx_export import run as export
        from export.recipes import parse_precisions

        print(f"[bench] exporting {a.model} ({a.precisions}) ...", flush=True)
        bundle, _ = export(OnnxConfig(a.model, str(tmp / "bundle"), parse_precisions(a.precisions)), lambda m: None)
    processor = ColLFM2Processor.from_pretrained(bundle)
    pages, queries = inputs(processor)
    pages = {n: img for n, img in pages.items() if n in a.pages}
    result: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["machine"] = machine(a.threads)
    result["config"] = {"model": a.model, "bundle": str(bundle), "runs": a.runs, "warmup": a.warmup,
                        "threads": a.threads, "pages": {n: PAGES[n] for n in pages}, "query_tokens": QUERY_TOKENS,
                        "maxsim_pages": a.maxsim_pages}  # fmt: skip
    print("[bench] measuring GEMM peaks and copy bandwidth ...", flush=True)
    result["gemm_peaks"] = gemm_peaks(a.threads)
    result["gemm_peak_gflops"] = result["gemm_peaks"]["fp32"]
    result["copy_gbs"] = copy_bandwidth()
    result["read_gbs"] = read_bandwidth(a.threads)
    result["flops"] = stage_flops(bundle, {n: None for n in pages}, pages, processor, QUERY_TOKENS)
    manifest = json.loads((bundle / "manifest.json").read_text())
    # Bytes a query must stream once: the text graph's weights (the query floor's memory term).
    result["text_weight_bytes"] = {p: (bundle / e["graphs"]["text"]["file"]).stat().st_size
                                   for p, e in manifest["precisions"].items()}  # fmt: skip
    result["preprocess"] = {n: timeit(lambda img=img: processor.process_images([img]), a.warmup, a.runs)
                            for n, img in pages.items()}  # fmt: skip

    backends: dict[str, Any] = {}
    print("[bench] PyTorch eager fp32 ...", flush=True)
    ref = load_model(a.model).model.float().eval()
    backends["torch-eager-fp32"] = eager_stages(ref, processor, pages, queries, a.warmup, a.runs)
    tput = {"torch-eager-fp32": throughput(ref, processor, pages["512x512"], a.batch_sizes, a.warmup, a.runs)}
    if want_bf16(a.bf16, result["machine"]["bf16"]):
        print("[bench] PyTorch eager bf16 ...", flush=True)
        m16 = load_model(a.model).model.to(torch.bfloat16).eval()
        backends["torch-eager-bf16"] = eager_stages(m16, processor, pages, queries, a.warmup, a.runs)
        # Every backend gets the same entries: readers of the JSON (and its table) index them all.
        tput["torch-eager-bf16"] = throughput(m16, processor, pages["512x512"], a.batch_sizes, a.warmup, a.runs)
        del m16
    else:
        why = "--bf16 off" if a.bf16 == "off" else "no bf16 instructions (emulated bf16 is 6-10x slower than fp32)"
        result["skipped"] = {"torch-eager-bf16": why}
    ort_models = {}
    bundle_precisions = json.loads((bundle / "manifest.json").read_text())["precisions"]
    for p in bundle_precisions:
        if p == "int8-qdq":
            continue  # the TensorRT input; ORT CPU runs it but it is not a CPU recipe
        print(f"[bench] ORT CPU {p} ...", flush=True)
        m = ColLFM2.from_pretrained(bundle, precision=p, threads=a.threads)
        ort_models[f"ort-cpu-{p}"] = m
        backends[f"ort-cpu-{p}"] = ort_stages(m, processor, pages, queries, a.warmup, a.runs)
        tput[f"ort-cpu-{p}"] = throughput(m, processor, pages["512x512"], a.batch_sizes, a.warmup, a.runs)
    if "ov-cpu" in a.engines:
        from runtime.encoder.ov import offered
        from runtime.encoder.runner import ENGINES

        for p in offered(ENGINES["ov-cpu"], list(bundle_precisions)):
            print(f"[bench] OpenVINO CPU {p} ...", flush=True)
            m = ColLFM2.from_pretrained(bundle, precision=p, threads=a.threads, backend="ov-cpu")
            ort_models[f"ov-cpu-{p}"] = m
            backends[f"ov-cpu-{p}"] = ort_stages(m, processor, pages, queries, a.warmup, a.runs)
            tput[f"ov-cpu-{p}"] = throughput(m, processor, pages["512x512"], a.batch_sizes, a.warmup, a.runs)
    if torch.cuda.is_available():
        # The full CUDA comparison (bf16, batching, GPU peaks) is benchmarks/bench_cuda.py.
        print("[bench] PyTorch CUDA fp32 ...", flush=True)
        cuda = load_model(a.model).model.float().eval().to("cuda")
        backends["torch-cuda-fp32"] = eager_stages(cuda, processor, pages, queries, a.warmup, a.runs)
        del cuda
    result["backends"] = backends
    result["throughput_512x512"] = tput
    print("[bench] fidelity ...", flush=True)
    result["fidelity"] = fidelity(ref, ort_models, processor, pages, queries)
    print(f"[bench] MaxSim over {a.maxsim_pages} pages ...", flush=True)
    result["maxsim"] = maxsim_bench(a.maxsim_pages, 266, a.warmup, a.runs, tmp, with_seed=True)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["ratios"] = ratios(result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random", help="preset or checkpoint dir (default random)")
    ap.add_argument("--bundle", help="an exported bundle of that model (default: export one to a temp dir)")
    ap.add_argument("--precisions", default="fp32,fp16,int8", help="precisions to export when --bundle is not given")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4],
                    help="batches of 512x512 pages for pages/s (default 1,2,4)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pages", type=lambda s: s.split(","), default=list(PAGES),
                    help=f"page sizes to time (default {','.join(PAGES)}; 512x512 is always measured)")  # fmt: skip
    ap.add_argument("--engines", type=lambda s: s.split(","), default=["ort-cpu", "ov-cpu"],
                    help="runtime engines to measure beside eager: ort-cpu (always) and ov-cpu (default both; "
                    "ov-cpu's precisions are those this CPU offers: fp32, int8, and bf16 where native)")  # fmt: skip
    ap.add_argument("--maxsim-pages", type=int, default=10_000)
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="PyTorch eager bf16: auto (where the CPU has bf16 instructions), on (always; emulated bf16 "
                    "is slow, but the branch runs on every CPU), off")  # fmt: skip
    ap.add_argument("--no-bf16", dest="bf16", action="store_const", const="off", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--name", default=None, help="file stem (default: bench-<model>-<cpu count>cpu)")
    a = ap.parse_args(argv)
    unknown = sorted(set(a.pages) - set(PAGES))
    if unknown:
        ap.error(f"unknown page size {', '.join(unknown)}; choose from {', '.join(PAGES)}")
    a.pages = sorted({*a.pages, "512x512"}, key=list(PAGES).index)  # pages/s and the ratios use it
    result = run(a)
    stem = a.name or f"bench-{Path(a.model).name}-{os.cpu_count()}cpu"
    write_results(result, Path(a.out_dir), stem, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
