"""Latency estimates for Jetson Orin Nano / Orin NX / AGX Orin and Raspberry Pi 5, with the method.

No board ran these. Each figure is

    time(graph) = max(FLOPs / (device peak at that precision x efficiency),
                      weight bytes / memory bandwidth)

* **FLOPs per stage, from the graphs.** The vision graph's FLOPs come from ONNX shape inference on
  the exported graph at batch 1 (every MatMul/Gemm, 2*M*K*N). The text graph's shapes are
  data-dependent, so its FLOPs are counted per token from its weight MatMuls (2*K*N each, all
  of which run on every token) plus 2 * 2 * S^2 * d for each pair of activation MatMuls
  (attention scores and values). A 512x512 page is one tile and 266 tokens; an A4 page at 150 dpi
  is 6 tiles + a thumbnail and 1,813 tokens; a query is 20 tokens.
* **Device peaks (dense).** NVIDIA quotes Orin GPU throughput as sparse INT8 TOPS: 40 for Orin
  Nano 8 GB (8 SMs at 625 MHz). Dense INT8 is half of that and dense FP16 a quarter, which gives
  the 10 TFLOPS FP16 commonly quoted for Orin Nano [2]. Orin NX 16 GB has the same 8-SM GPU at
  918 MHz (GPU share of its 100 TOPS: 58.8 sparse), and AGX Orin 64 GB has 16 SMs at 1.3 GHz
  (NVIDIA lists 170 sparse INT8 TOPS for its GPU) [1]. Raspberry Pi 5: 4 Cortex-A76 cores at
  2.4 GHz, each with two 128-bit FMA pipes, giving 16 FP32 FLOP/cycle/core = 153.6 GFLOP/s; the
  int8 dot-product instructions (SDOT) give 4x that [3].
* **Efficiency, from published TensorRT figures.** NVIDIA's TensorRT BERT demo [4] reports BERT-Large
  (24 x 1024, 0.64 GFLOP/token) at sequence length 384 on A100 (312 dense FP16 TFLOPS, 624 INT8
  TOPS): FP16 3.12 ms at batch 1 and 11.53 ms at batch 8, INT8 2.81 ms and 7.16 ms. That is 25 % /
  55 % of the FP16 peak and 14 % / 44 % of the INT8 peak. A single tile or a query is the batch-1
  regime; a tiled page (7 tiles in one vision call) the batch-8 one. The ratio of memory bandwidth
  to FP16 peak is about the same on Orin Nano (68 GB/s : 10 TFLOPS) as on A100 (1.6 TB/s : 312),
  so the same fractions are used. For ONNX Runtime on the Pi the factor is this project's own
  measurement on x86 (ORT reached 89 % of the GEMM peak measured in the same run on a page,
  benchmarks/results/bench-random-2cpu.md), times an assumed 70 % for GEMM peak over
  theoretical peak on the A76 (MLAS NEON kernels; not measured on a Pi): 0.6 for fp32. int8
  on the Pi uses the int8 recipe; its efficiency is assumed equal to fp32's (the optimistic
  side: docs/cpu-classes.md has what int8 measured on x86).

[1] NVIDIA Jetson Orin module data sheets / developer.nvidia.com/embedded/jetson-modules (sparse INT8 TOPS).
[2] E. Liu, "Why your Jetson Orin Nano's 40 TOPS goes unused", 2025 (40 TOPS INT8, 10 TFLOPS FP16, 68 GB/s).
[3] Arm Cortex-A76 Software Optimization Guide: two ASIMD/FP pipelines, each FMA-capable on 128-bit vectors.
[4] github.com/NVIDIA/TensorRT, demo/BERT/README.md, "Inference performance: NVIDIA A100 (40GB)".

    python benchmarks/device_estimates.py --bundle BUNDLE [--out benchmarks/results/device_estimates]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.flops import text_flops, vision_flops

PAGE_512 = {"tiles": 1, "tokens": 266}
PAGE_A4 = {"tiles": 7, "tokens": 1813}
QUERY_TOKENS = 20

# name -> (fp16 (GPU) or fp32 (CPU) dense peak FLOP/s, int8 dense peak OP/s, memory GB/s, kind).
# Bandwidth: 68 / 102.4 / 204.8 GB/s for the Orin modules [1]; Pi 5 LPDDR4X-4267 x32 ~17 GB/s.
DEVICES = {
    "orin-nano-8gb": (40e12 / 4, 40e12 / 2, 68, "gpu"),
    "orin-nx-16gb": (58.8e12 / 4, 58.8e12 / 2, 102.4, "gpu"),
    "agx-orin-64gb": (170e12 / 4, 170e12 / 2, 204.8, "gpu"),
    "raspberry-pi-5": (153.6e9, 4 * 153.6e9, 17, "cpu"),
}
# Efficiency factors (see the module docstring for where each comes from).
TRT_EFF = {("fp16", 1): 0.25, ("fp16", 8): 0.55, ("int8", 1): 0.14, ("int8", 8): 0.44}
ORT_ARM_EFF = 0.89 * 0.70


def params(path: Path) -> int:
    import onnx

    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


def estimate(bundle: Path) -> dict:
    fp32 = bundle / "fp32"
    v_tile = vision_flops(fp32 / "vision.onnx")
    n_params = {"vision": params(fp32 / "vision.onnx"), "text": params(fp32 / "text.onnx")}
    flops = {
        "page_512": {"vision": v_tile * PAGE_512["tiles"], "text": text_flops(fp32 / "text.onnx", PAGE_512["tokens"])},
        "page_a4": {"vision": v_tile * PAGE_A4["tiles"], "text": text_flops(fp32 / "text.onnx", PAGE_A4["tokens"])},
        "query_20": {"text": text_flops(fp32 / "text.onnx", QUERY_TOKENS)},
    }
    rows = []
    for device, (peak16, peak8, bw_gbs, kind) in DEVICES.items():
        for precision in ("fp16", "int8") if kind == "gpu" else ("fp32", "int8"):
            peak = peak8 if precision == "int8" else peak16
            est = {}
            for stage, parts in flops.items():
                total = 0.0
                for graph, f in parts.items():
                    if kind == "gpu":
                        batch = 8 if (stage == "page_a4" and graph == "vision") else 1
                        eff = TRT_EFF[(precision, batch)]
                    else:
                        eff = ORT_ARM_EFF
                    # A call also reads every weight once: the floor for short queries.
                    total += max(f / (peak * eff), n_params[graph] * BYTES[precision] / (bw_gbs * 1e9))
                est[stage] = total
            rows.append({"device": device, "backend": "TensorRT" if kind == "gpu" else "ORT CPU",
                         "precision": precision, "seconds": est})  # fmt: skip
    return {
        "flops": flops,
        "params": n_params,
        "rows": rows,
        "method": __doc__.split("\n\n", 1)[1].split("    python")[0].strip(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a bundle of the full-size model (fp32 graphs)")
    ap.add_argument("--out", default="benchmarks/results/device_estimates")
    a = ap.parse_args()
    result = estimate(Path(a.bundle))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    f = result["flops"]
    g = {k: sum(v.values()) / 1e9 for k, v in f.items()}
    lines = [
        f"FLOPs from the graphs: 512x512 page {g['page_512']:.0f} G (vision {f['page_512']['vision'] / 1e9:.0f}, "
        f"text {f['page_512']['text'] / 1e9:.0f}); A4 page {g['page_a4']:.0f} G; 20-token query {g['query_20']:.1f} G",
        "",
        "| device | backend | precision | 512x512 page | A4 page (7 tiles) | 20-token query |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        s = r["seconds"]
        lines.append(f"| {r['device']} | {r['backend']} | {r['precision']} | {s['page_512'] * 1e3:,.0f} ms | "
                     f"{s['page_a4'] * 1e3:,.0f} ms | {s['query_20'] * 1e3:,.1f} ms |")  # fmt: skip
    table = "\n".join(lines)
    out.with_suffix(".md").write_text("Estimates, not measurements; method in benchmarks/device_estimates.py.\n\n"
                                      + table + "\n")  # fmt: skip
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
