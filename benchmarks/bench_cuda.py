"""``python -m benchmarks.bench_cuda``: the PyTorch reference on a GPU, fp32 and bf16, against
PyTorch eager fp32 on this machine's CPU, measured in one run.

This is the datacenter baseline that the edge runtime is compared with, and the check that the
reference path behaves the same on CUDA as on the CPU (the parity tests' ground truth runs on
either). One run measures:

* the GPU's own ceilings, now: fp32 GEMM (TF32 off), bf16 GEMM (8192^3) and device-to-device copy;
* per backend (CPU eager fp32 on all cores, CUDA fp32 with TF32 off, CUDA bf16): vision, embedding
  merge, text and end-to-end page for a 512x512 and an A4 150-dpi page, and 20/64-token queries,
  p50/p95/mean after warm-up, each timed call ending in a synchronize;
* pages/s over batch sizes of 512x512 pages (forward only, batch already on the device) and the
  peak GPU memory of each backend;
* FLOPs per stage (``torch.utils.flop_counter``, on the calls that are timed), so each GPU stage
  is also a fraction of the GEMM peak of its dtype;
* fidelity of CUDA fp32 and bf16 against CPU fp32 through ``export.parity`` (the function the
  export and the tests use), pages and queries, with top-5 agreement.

Writes ``NAME.json``, ``NAME.md`` and (with matplotlib) ``NAME.png`` under ``--out-dir``.
``--device cpu`` runs the same code with the "device" backends on the CPU; the tests use it.

    python -m benchmarks.bench_cuda [--model random|tiny|CKPT] [--runs 5] [--name NAME]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.hardware import machine
from benchmarks.report import stage_table, write_results
from benchmarks.stages import PAGES, TorchAsBundle, eager_stage_fns, eager_stages, fidelity, inputs, throughput
from benchmarks.timing import timeit

SCHEMA = "collfm2-edge-benchmark-cuda/1"


def gpu_ceilings(dev: Any) -> dict[str, float]:
    """fp32 (TF32 off) and bf16 GEMM TFLOP/s at 8192^3, and device-to-device copy GB/s (bytes read
    + written), measured now on ``dev``."""
    import torch

    n = 8192
    out: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        t = timeit(lambda a=a: (a @ a, torch.cuda.synchronize()), 3, 10)
        out[f"{name}_tflops"] = 2 * n**3 / (t["p50_ms"] / 1e3) / 1e12
        del a
    x = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    t = timeit(lambda: (y.copy_(x), torch.cuda.synchronize()), 3, 10)
    out["copy_gbs"] = 2 * x.numel() / (t["p50_ms"] / 1e3) / 1e9
    return out


def gpu_info(dev: Any) -> dict[str, Any]:
    import torch

    p = torch.cuda.get_device_properties(dev)
    return {"name": p.name, "multiprocessors": p.multi_processor_count, "memory_gb": p.total_memory / 1e9,
            "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda}  # fmt: skip


def count_flops(model: Any, processor: Any, pages: dict, queries: dict) -> dict[str, Any]:
    """FLOPs of the timed calls, from torch's flop counter (matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn: Callable[[], Any]) -> int:
        with FlopCounterMode(display=False) as fc:
            fn()
        return int(fc.get_total_flops())

    out: dict[str, Any] = {}
    with torch.inference_mode():
        for name, img in pages.items():
            fns = eager_stage_fns(model, processor.process_images([img]))
            out[name] = {"vision": flops(fns["vision"]), "text": flops(fns["text"])}
            out[name]["page_end_to_end"] = out[name]["vision"] + out[name]["text"]
        for n, q in queries.items():
            out[f"query_{n}"] = flops(lambda q=q: model.encode(processor.process_queries(q)))
    return out


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Speed-up over CPU eager fp32 (> 1 = faster) for every stage, and for GPU backends the
    fraction of the GEMM peak of the backend's dtype."""
    base = result["backends"]["torch-eager-fp32"]
    flops = result["flops"]
    out: dict[str, Any] = {}
    for name, stages in result["backends"].items():
        dtype = "bf16" if "bf16" in name else "fp32"
        peak = result["gpu_ceilings"].get(f"{dtype}_tflops") if "cuda" in name else None

        def rate(base_ms: float, ms: float, f: float | None, peak: float | None = peak) -> dict[str, float]:
            out = {"vs_eager_fp32": base_ms / ms}
            if peak and f:
                out["fraction_of_gemm_peak"] = f / (ms / 1e3) / (peak * 1e12)
            return out

        r: dict[str, Any] = {}
        for key, val in stages.items():
            if "p50_ms" in val:  # a query
                r[key] = rate(base[key]["p50_ms"], val["p50_ms"], flops[key])
                continue
            r[key] = {s: rate(base[key][s]["p50_ms"], val[s]["p50_ms"], flops[key].get(s))
                      for s in ("vision", "merge", "text", "page_end_to_end")}  # fmt: skip
        out[name] = r
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    from export._compat import patch_torchvision

    patch_torchvision()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_cuda: no CUDA device here (torch.cuda.is_available() is False); "
            "--device cpu runs the same code on the CPU"
        )
    torch.set_num_threads(a.threads)
    # "fp32" means fp32: TF32 would trade the reference's precision for speed behind our back.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from export.checkpoint import load_model, write_processor_files
    from runtime import ColLFM2Processor

    print(f"[bench-cuda] loading {a.model} ...", flush=True)
    loaded = load_model(a.model)
    ref = loaded.model.float().eval()
    if Path(a.model).is_dir():
        proc_dir = Path(a.model)
    else:
        proc_dir = Path(tempfile.mkdtemp(prefix="collfm2-bench-cuda-"))
        write_processor_files(proc_dir, None)
    processor = ColLFM2Processor.from_pretrained(proc_dir)
    pages, queries = inputs(processor)
    dev = torch.device(a.device)
    result: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["machine"] = machine(a.threads)
    if dev.type == "cuda":
        result["machine"]["gpu"] = gpu_info(dev)
    result["config"] = {"model": a.model, "random_weights": loaded.random_weights, "device": a.device,
                        "runs": a.runs, "warmup": a.warmup, "cpu_runs": a.cpu_runs, "threads": a.threads,
                        "pages": PAGES, "query_tokens": list(queries), "batch_sizes": a.batch_sizes,
                        "tf32": False, "attention": ref.config.text_config._attn_implementation}  # fmt: skip
    result["gpu_ceilings"] = gpu_ceilings(dev) if dev.type == "cuda" else {}

    backends: dict[str, Any] = {}
    tput: dict[str, Any] = {}
    gpu_mem: dict[str, float] = {}
    print(f"[bench-cuda] PyTorch eager fp32 on the CPU ({a.threads} threads) ...", flush=True)
    backends["torch-eager-fp32"] = eager_stages(ref, processor, pages, queries, min(a.warmup, 1), a.cpu_runs)
    tput["torch-eager-fp32"] = throughput(ref, processor, pages["512x512"], [1, 4], min(a.warmup, 1), a.cpu_runs)
    models = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        name = f"torch-{dev.type}-{dtype_name}"
        print(f"[bench-cuda] {name} ...", flush=True)
        m = copy.deepcopy(ref).to(device=dev, dtype=dtype)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        backends[name] = eager_stages(m, processor, pages, queries, a.warmup, a.runs)
        tput[name] = throughput(m, processor, pages["512x512"], a.batch_sizes, a.warmup, a.runs)
        if dev.type == "cuda":
            gpu_mem[name] = torch.cuda.max_memory_allocated(dev) / 2**20
        models[name] = m
    result["backends"] = backends
    result["throughput_512x512"] = tput
    result["gpu_peak_memory_mb"] = gpu_mem
    print("[bench-cuda] counting FLOPs ...", flush=True)
    result["flops"] = count_flops(models[f"torch-{dev.type}-fp32"], processor, pages, queries)
    print("[bench-cuda] fidelity against CPU fp32 ...", flush=True)
    result["fidelity"] = fidelity(ref, {n: TorchAsBundle(m) for n, m in models.items()}, processor, pages, queries)
    result["ratios"] = ratios(result)
    return result


def markdown(result: dict[str, Any]) -> str:
    m, c, g = result["machine"], result["config"], result["gpu_ceilings"]
    gpu = m["gpu"]
    gpu_line = "GPU: none (--device cpu)."
    if isinstance(gpu, dict):
        gpu_line = (f"GPU: {gpu['name']} ({gpu['multiprocessors']} SMs, {gpu['memory_gb']:.0f} GB, "
                    f"CUDA {gpu['cuda']}); "
                    f"measured now: fp32 GEMM {g['fp32_tflops']:.1f} TFLOP/s (TF32 off), bf16 GEMM "
                    f"{g['bf16_tflops']:.0f} TFLOP/s, device copy {g['copy_gbs']:.0f} GB/s.")  # fmt: skip
    weights = "RANDOM weights: timings and parity are real, rankings are meaningless"
    lines = [
        f"# collfm2-edge PyTorch reference on {c['device']} ({result['created']})",
        "",
        f"Model: {c['model']} ({weights if c['random_weights'] else 'checkpoint'}); "
        f"attention {c['attention']}. CPU: {m['cpu']}, {m['cores']} cores, {m['threads']} threads. {gpu_line} "
        f"torch {m['torch']}, transformers {m['transformers']}.",
        f"p50 of {c['runs']} runs ({c['cpu_runs']} on the CPU); "
        "ratio = CPU eager fp32 time / this time (> 1 is faster).",
        "",
        # One decimal more on the GEMM-peak fraction: a single GPU page uses a few percent of it.
        *stage_table(result, "CPU eager fp32", ratio_fmt=".1f", frac_fmt=".1%"),
    ]
    lines += ["", "| backend | batch of 512x512 pages | p50 ms | pages/s | peak GPU memory MB |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, by_bs in result["throughput_512x512"].items():
        mem = result["gpu_peak_memory_mb"].get(name)
        for bs, v in by_bs.items():
            mem_s = f"{mem:.0f}" if mem else ""
            lines.append(f"| {name} | {bs} | {v['p50_ms']:.1f} | {v['pages_per_s']:.1f} | {mem_s} |")
    lines += ["", "| backend vs CPU fp32 | pages mean / worst cos | queries mean / worst cos | pages max-abs | top-5 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, f in result["fidelity"].items():
        p, q = f["pages"], f["queries"]
        lines.append(f"| {name} | {p['mean_cos']:.6f} / {p['worst_cos']:.6f} | {q['mean_cos']:.6f} / "
                     f"{q['worst_cos']:.6f} | {p['max_abs']:.1e} | {f['top5_agreement']:.2f} |")  # fmt: skip
    fl = result["flops"]
    lines += ["", "FLOPs (torch flop counter): " + "; ".join(
        f"{k} {v['page_end_to_end'] / 1e9:.0f} G (vision {v['vision'] / 1e9:.0f}, text {v['text'] / 1e9:.0f})"
        if isinstance(v, dict) else f"{k} {v / 1e9:.1f} G" for k, v in fl.items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cuda", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random", help="preset or checkpoint dir (default random)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per GPU stage")
    ap.add_argument("--cpu-runs", type=int, default=2, help="timed runs per CPU stage (the slow baseline)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--name", default=None, help="file stem (default: bench-cuda-<model>-<gpu>)")
    a = ap.parse_args(argv)
    result = run(a)
    gpu = result["machine"]["gpu"]
    tag = gpu["name"].split()[-1].lower() if isinstance(gpu, dict) else "cpu"
    stem = a.name or f"bench-cuda-{Path(a.model).name}-{tag}"
    title = f"collfm2-edge reference on {gpu['name'] if isinstance(gpu, dict) else 'CPU'} vs {result['machine']['cpu']}"
    write_results(result, Path(a.out_dir), stem, markdown(result), title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
