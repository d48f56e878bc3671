"""From a benchmark result to ratios (each stage against PyTorch eager fp32 in the same run, and as
a fraction of the GEMM peak), the markdown table and the plot, and writing JSON, table and plot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Speed-up of each backend and stage over eager fp32 (> 1 = faster), and GEMM-peak fractions."""
    base = result["backends"]["torch-eager-fp32"]
    out: dict[str, Any] = {}
    for name, stages in result["backends"].items():
        # int8 graphs are held against the int8 GEMM peak, everything else against fp32's.
        peak = result["gemm_peaks"]["int8" if "int8" in name else "fp32"] * 1e9
        r: dict[str, Any] = {}
        for key, val in stages.items():
            if "p50_ms" in val:
                r[key] = {"vs_eager_fp32": base[key]["p50_ms"] / val["p50_ms"]}
                f = result["flops"].get(key, {}).get("text")
                if f:
                    r[key]["fraction_of_gemm_peak"] = f / (val["p50_ms"] / 1e3) / peak
                # A query's floor: its FLOPs at the GEMM peak, or one read of the text weights at
                # the read bandwidth measured in this run, whichever is larger.
                weights = result.get("text_weight_bytes", {}).get(name.rsplit("-", 1)[-1])
                if f and weights and "read_gbs" in result:
                    floor_s = max(f / peak, weights / (result["read_gbs"] * 1e9))
                    r[key]["floor_ms"] = floor_s * 1e3
                    r[key]["vs_floor"] = val["p50_ms"] / 1e3 / floor_s
                continue
            r[key] = {}
            for stage in ("vision", "merge", "text", "page_end_to_end"):
                r[key][stage] = {"vs_eager_fp32": base[key][stage]["p50_ms"] / val[stage]["p50_ms"]}
                f = result["flops"].get(key, {})
                flops = {"vision": f.get("vision"), "text": f.get("text"),
                         "page_end_to_end": (f.get("vision") or 0) + (f.get("text") or 0)}.get(stage)  # fmt: skip
                if flops:
                    r[key][stage]["fraction_of_gemm_peak"] = flops / (val[stage]["p50_ms"] / 1e3) / peak
        out[name] = r
    if "throughput_512x512" in result:
        best = {n: max(v.items(), key=lambda kv: kv[1]["pages_per_s"]) for n, v in result["throughput_512x512"].items()}
        base_best = best["torch-eager-fp32"][1]["pages_per_s"]
        out["throughput_512x512"] = {n: {"best_batch": int(bs), "pages_per_s": v["pages_per_s"],
                                         "vs_eager_fp32": v["pages_per_s"] / base_best}
                                     for n, (bs, v) in best.items()}  # fmt: skip
    peak = result["gemm_peaks"]["fp32"] * 1e9
    ms = result["maxsim"]
    t = ms["ours"]["p50_ms"] / 1e3
    # "seed" in these keys is upstream sauerkrautlm-colpali's score_multi_vector (the schema's names).
    out["maxsim"] = {
        "ours_gflops": ms["flops"] / t / 1e9,
        "ours_fraction_of_gemm_peak": ms["flops"] / t / peak,
        "ours_gb_per_s": ms["doc_bytes_fp16"] / t / 1e9,
        "ours_vs_seed": ms["seed_score_multi_vector"]["p50_ms"] / ms["ours"]["p50_ms"]
        if "seed_score_multi_vector" in ms
        else None,
        "ours_vs_naive": ms["naive_loop"]["p50_ms"] / ms["ours"]["p50_ms"],
        # The same scan through the index: memory-mapped fp16 segments, no packing copy.
        "index_gflops": ms["flops"] / (ms["index_search"]["p50_ms"] / 1e3) / 1e9,
        "index_fraction_of_gemm_peak": ms["flops"] / (ms["index_search"]["p50_ms"] / 1e3) / peak,
        "index_vs_seed": ms["seed_score_multi_vector"]["p50_ms"] / ms["index_search"]["p50_ms"]
        if "seed_score_multi_vector" in ms
        else None,
    }
    return out


def stage_rows(result: dict[str, Any]) -> Iterator[tuple[str, str, str, dict, dict]]:
    """(backend, input label, stage, timing, ratio) for every timed stage, in table order: the
    rows that both benchmark tables print."""
    for name, stages in result["backends"].items():
        r = result["ratios"][name]
        for key, val in stages.items():
            if "p50_ms" in val:  # a query
                yield name, f"{key.split('_')[1]} tokens", "query", val, r[key]
                continue
            for stage in ("vision", "merge", "text", "page_end_to_end"):
                yield name, key, stage, val[stage], r[key][stage]


def stage_table(result: dict[str, Any], baseline: str, ratio_fmt: str = ".2f", frac_fmt: str = ".0%") -> list[str]:
    """The per-stage markdown table both benchmarks print: p50, the ratio to ``baseline``, the
    fraction of the GEMM peak and, for queries that have one, the ratio to their floor."""
    lines = [f"| backend | input | stage | p50 ms | vs {baseline} | of GEMM peak |", "|---|---|---|---|---|---|"]
    for name, label, stage, timing, ratio in stage_rows(result):
        frac = ratio.get("fraction_of_gemm_peak")
        floor = f"; {ratio['vs_floor']:.2f}x its floor" if "vs_floor" in ratio else ""
        lines.append(f"| {name} | {label} | {stage} | {timing['p50_ms']:.1f} | {ratio['vs_eager_fp32']:{ratio_fmt}}x | "
                     f"{format(frac, frac_fmt) if frac else ''}{floor} |")  # fmt: skip
    return lines


def hidden_note(m: dict[str, Any]) -> str:
    """`` (AVX512BF16 hidden: ...)`` where the run hid CPU features (``COLLFM2_CPU_HIDE``), else empty."""
    if not m.get("hidden"):
        return ""
    return (
        f" ({', '.join(m['hidden'])} hidden with COLLFM2_CPU_HIDE: this repo's choices are those of a CPU "
        "without them; the libraries' own kernels are unchanged)"
    )


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# collfm2-edge benchmark ({result['created']})",
        "",
        f"Machine: {m['cpu']}{hidden_note(m)}, {m['cores']} cores, {m['threads']} threads, GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}. Model: {result['config']['model']} "
        f"({'RANDOM weights' if result['config']['model'] in ('random', 'tiny') else 'checkpoint'}).",
        f"Measured in the same run: fp32 GEMM peak {result['gemm_peaks']['fp32']:.1f} GFLOP/s (best of ORT and torch, "
        f"2048³ and 4096³), int8 GEMM peak {result['gemm_peaks']['int8']:.1f} GOP/s (ORT MatMulInteger 2048³; "
        f"int8 dot-product instructions: {'yes' if m.get('int8_dot') else 'no'}), copy bandwidth "
        f"{result['copy_gbs']:.1f} GB/s, read bandwidth {result.get('read_gbs', float('nan')):.1f} GB/s. "
        f"p50 of {result['config']['runs']} runs; ratio = eager fp32 time / this time (> 1 is faster); int8 rows "
        "are a fraction of the int8 peak. A query's floor is its FLOPs at the GEMM peak or one read of its text "
        "weights at the read bandwidth, whichever is longer.",
        "",
        *stage_table(result, "eager fp32"),
    ]
    if "throughput_512x512" in result["ratios"]:
        lines += ["", "| backend | 512x512 pages/s by batch size | best | vs eager fp32 (each at its best batch) |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, by_bs in result["throughput_512x512"].items():
            t = result["ratios"]["throughput_512x512"][name]
            each = ", ".join(f"{bs}: {v['pages_per_s']:.2f}" for bs, v in by_bs.items())
            lines.append(f"| {name} | {each} | {t['pages_per_s']:.2f} (batch {t['best_batch']}) | "
                         f"{t['vs_eager_fp32']:.2f}x |")  # fmt: skip
    lines += ["", "| preprocess | p50 ms |", "|---|---|"]
    lines += [f"| {n} | {v['p50_ms']:.1f} |" for n, v in result["preprocess"].items()]
    ms, mr = result["maxsim"], result["ratios"]["maxsim"]
    lines += [
        "",
        f"MaxSim, 20-token query over {ms['pages']:,} pages × {ms['rows']} rows: ours {ms['ours']['p50_ms']:.0f} ms "
        f"({mr['ours_gflops']:.1f} GFLOP/s = {mr['ours_fraction_of_gemm_peak']:.0%} of GEMM peak, "
        f"{mr['ours_gb_per_s']:.2f} GB/s of fp16 vectors); upstream score_multi_vector "
        f"{ms.get('seed_score_multi_vector', {}).get('p50_ms', float('nan')):.0f} ms "
        f"({mr['ours_vs_seed'] or float('nan'):.1f}x slower than ours); "
        f"naive loop {ms['naive_loop']['p50_ms']:.0f} ms; "
        f"index search {ms['index_search']['p50_ms']:.0f} ms ({mr['index_gflops']:.1f} GFLOP/s = "
        f"{mr['index_fraction_of_gemm_peak']:.0%} of GEMM peak, {mr['index_vs_seed'] or float('nan'):.1f}x faster "
        "than upstream).",
        "",
        "| precision vs eager fp32 | pages mean / worst cos | queries mean / worst cos | top-5 agreement |",
        "|---|---|---|---|",
    ]
    for name, f in result["fidelity"].items():
        pages_cos = f"{f['pages']['mean_cos']:.6f} / {f['pages']['worst_cos']:.6f}"
        queries_cos = f"{f['queries']['mean_cos']:.6f} / {f['queries']['worst_cos']:.6f}"
        lines.append(f"| {name} | {pages_cos} | {queries_cos} | {f['top5_agreement']:.2f} |")
    lines += ["", f"Peak RSS of the benchmark process (torch model, ORT sessions): {result['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, title: str | None = None) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n in result["backends"] if n != "torch-eager-fp32"]
    keys = [k for k in result["ratios"][names[0]] if k != "maxsim"] if names else []
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        vals = []
        for k in keys:
            r = result["ratios"][n][k]
            vals.append(r["vs_eager_fp32"] if "vs_eager_fp32" in r else r["page_end_to_end"]["vs_eager_fp32"])
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=n)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(keys)) + width * (len(names) - 1) / 2, keys)
    ax.set_ylabel("speed-up vs PyTorch eager fp32 (same run)")
    m = result["machine"]
    ax.set_title(title or f"collfm2-edge, {m['cpu']} ({m['threads']} threads)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result: dict[str, Any], out: Path, stem: str, table: str, title: str | None = None) -> None:
    """``stem``.json, .md and (with matplotlib) .png under ``out``; the table is also printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    plotted = plot(result, out / f"{stem}.png", title=title)
    print(table)
    print(f"wrote {out / stem}.json, .md" + (", .png" if plotted else " (no plot: pip install matplotlib)"))
