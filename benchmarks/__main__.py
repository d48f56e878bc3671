"""``python -m benchmarks``: per-stage latency of PyTorch eager and the ONNX bundle, side by side.

One run measures, on this machine and in this process:

* the fp32 GEMM peak (ONNX Runtime MatMul, 2048^3) and a STREAM-like copy bandwidth, so that every
  figure can be read as a fraction of what the hardware gave in the same minute;
* decode + preprocess (our numpy processor; backend-independent);
* per backend (PyTorch eager fp32, and bf16 where the CPU has bf16 instructions; ORT CPU for each
  precision of the bundle; CUDA when present): vision graph, embedding lookup + merge, text graph,
  end-to-end page, and query encode, as p50/p95/mean over ``--runs`` after ``--warmup``;
* MaxSim over ``--maxsim-pages`` synthetic pages x 266 rows (ours, the seed's torch
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
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import timeit

SCHEMA = "collfm2-edge-benchmark/1"
PAGES = {"512x512": (512, 512), "A4-150dpi": (1754, 1240)}
QUERY_TOKENS = (20, 64)


def machine(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    from runtime.cpu import cpu_host

    host = cpu_host()
    return {
        **host,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _ort_matmul(threads: int, n: int, a_type: int, b_type: int, op: str) -> Any:
    from onnx import TensorProto, helper

    from runtime.sessions import ort_session

    out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    g = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", a_type, [n, n]),
                           helper.make_tensor_value_info("b", b_type, [n, n])],
                          [helper.make_tensor_value_info("c", out_type, [n, n])])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return ort_session(m.SerializeToString(), threads)


def gemm_peaks(threads: int) -> dict[str, float]:
    """fp32 GEMM GFLOP/s (the best of ORT's MLAS and torch's BLAS over two sizes) and int8 GEMM
    GOP/s (ORT MatMulInteger, u8 x s8), measured now, in this process."""
    import torch
    from onnx import TensorProto

    def rate(n: int, fn: Callable[[], Any]) -> float:  # G(FL)OP/s of an n x n x n product
        return 2 * n**3 / (timeit(fn, 1, 3)["p50_ms"] / 1e3) / 1e9

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for n in (2048, 4096):
        a = rng.standard_normal((n, n)).astype(np.float32)
        s = _ort_matmul(threads, n, TensorProto.FLOAT, TensorProto.FLOAT, "MatMul")
        out[f"ort_fp32_{n}"] = rate(n, lambda s=s, a=a: s.run(None, {"a": a, "b": a}))
        t = torch.from_numpy(a)
        out[f"torch_fp32_{n}"] = rate(n, lambda t=t: t @ t)
    n = 2048
    s8 = _ort_matmul(threads, n, TensorProto.UINT8, TensorProto.INT8, "MatMulInteger")
    a8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b8 = rng.integers(-127, 127, (n, n), dtype=np.int8)
    out["ort_int8_2048"] = rate(n, lambda: s8.run(None, {"a": a8, "b": b8}))
    out["fp32"] = max(v for k, v in out.items() if "fp32" in k)
    out["int8"] = out["ort_int8_2048"]
    return out


def read_bandwidth(threads: int) -> float:
    """GB/s of a pure read stream: ORT's ReduceMax over 512 MB on ``threads`` threads. A query
    reads its weights and writes almost nothing, so its floor uses this, not the copy."""
    from onnx import TensorProto, helper

    from runtime.sessions import ort_session

    n = 1 << 27
    g = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["y"], keepdims=0)], "read",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    s = ort_session(m.SerializeToString(), threads)
    x = np.ones(n, np.float32)
    t = timeit(lambda: s.run(None, {"x": x}), 1, 5)
    return x.nbytes / (t["p50_ms"] / 1e3) / 1e9


def copy_bandwidth() -> float:
    a = np.ones(1 << 25, np.float32)  # 128 MB
    b = np.empty_like(a)
    t = timeit(lambda: np.copyto(b, a), 1, 5)
    return 2 * a.nbytes / (t["p50_ms"] / 1e3) / 1e9


# ---------------------------------------------------------------------------------------------


def _inputs(processor: Any) -> tuple[dict[str, Any], dict[int, list[str]]]:
    from export.grid import query_of_length, synthetic_page

    pages = {name: synthetic_page(h, w, seed=i) for i, (name, (h, w)) in enumerate(PAGES.items())}
    queries = {n: [query_of_length(processor, n + 1, seed=n)] for n in QUERY_TOKENS}  # + BOS
    return pages, queries


def _on_device(model: Any, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """A processor batch as torch tensors on ``model``'s device."""
    import torch

    dev = next(model.parameters()).device
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in batch.items()}


def _sync(model: Any) -> Callable[[], Any]:
    """What ends a timed call on ``model``'s device: a CUDA synchronize (else the clock stops at
    the kernel launch), nothing on the CPU."""
    import torch

    return torch.cuda.synchronize if next(model.parameters()).device.type == "cuda" else (lambda: None)


def eager_stage_fns(model: Any, batch: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """The page stages of a transformers model as closures over one processed page, on the
    model's device: ``vision``, ``merge`` and ``text``, each fed by the one before it (run once
    here). The timings and the FLOP counts both go through these, so they measure the same calls."""
    import torch

    t = _on_device(model, batch)
    pv = t["pixel_values"].to(model.dtype)

    def vision() -> Any:
        feats = model.model.get_image_features(
            pixel_values=pv, spatial_shapes=t["spatial_shapes"], pixel_attention_mask=t["pixel_attention_mask"]
        )
        return feats.pooler_output

    feats = torch.cat(list(vision()))

    def merge() -> Any:
        e = model.model.language_model.embed_tokens(t["input_ids"])
        mask = (t["input_ids"] == model.config.image_token_id)[..., None].expand_as(e)
        return e.masked_scatter(mask, feats.to(e.dtype))

    embeds = merge()

    def text() -> Any:
        h = model.model.language_model(inputs_embeds=embeds, attention_mask=t["attention_mask"],
                                       use_cache=False).last_hidden_state  # fmt: skip
        e = model.custom_text_proj(h)
        return e / e.norm(dim=-1, keepdim=True)

    return {"vision": vision, "merge": merge, "text": text}


def eager_stages(model: Any, processor: Any, pages: dict, queries: dict, warmup: int, runs: int) -> dict:
    """Per-stage times of a transformers model on whatever device it sits on (see ``_sync``)."""
    import torch

    sync = _sync(model)

    def timed(fn: Callable[[], Any]) -> dict[str, float]:
        return timeit(lambda: (fn(), sync()), warmup, runs)

    out: dict[str, Any] = {}
    with torch.inference_mode():
        for name, img in pages.items():
            b = processor.process_images([img])
            out[name] = {stage: timed(fn) for stage, fn in eager_stage_fns(model, b).items()}
            # encode() copies the result back to the host, which synchronises by itself.
            out[name]["page_end_to_end"] = timed(lambda img=img: model.encode(processor.process_images([img])))
            out[name]["tokens"] = int(b["attention_mask"].sum())
            out[name]["tiles"] = int(b["pixel_values"].shape[0])
        for n, q in queries.items():
            out[f"query_{n}"] = timed(lambda q=q: model.encode(processor.process_queries(q)))
    return out


def throughput(model: Any, processor: Any, img: Any, batch_sizes: list[int], warmup: int, runs: int) -> dict:
    """pages/s of the forward pass over batches of one page, preprocessed first (and moved to the
    model's device): a transformers model or a ``runtime.ColLFM2``."""
    if hasattr(model, "parameters"):  # a transformers model
        import torch

        sync = _sync(model)
        mode: Any = torch.inference_mode()

        def prepare(b: dict) -> Any:
            return _on_device(model, b)

        def call(t: Any) -> None:
            model(**t)
            sync()
    else:
        mode = contextlib.nullcontext()

        def prepare(b: dict) -> Any:
            return b

        def call(t: Any) -> None:
            model(**t)

    out: dict[str, Any] = {}
    with mode:
        for bs in batch_sizes:
            t = prepare(processor.process_images([img] * bs))
            r = timeit(lambda t=t: call(t), warmup, runs)
            out[str(bs)] = {**r, "pages_per_s": bs / (r["p50_ms"] / 1e3)}
    return out


class TorchAsBundle:
    """A transformers model called like a ``runtime.ColLFM2``: numpy batch in, padded [B, L, 128]
    float32 out (and ``encode_rows``), so that ``fidelity`` compares any backend against the same
    reference."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, **batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(**_on_device(self.model, batch)).float().cpu().numpy()

    def encode_rows(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        from runtime.preprocess.processor import real_rows

        return real_rows(self(**batch), batch["attention_mask"])


def ort_stages(model: Any, processor: Any, pages: dict, queries: dict, warmup: int, runs: int) -> dict:
    from runtime.encoder.model import merge_image_tokens

    out: dict[str, Any] = {}
    for name, img in pages.items():
        b = processor.process_images([img])

        def vision(b=b) -> Any:
            return model.image_tokens(b["pixel_values"], b["pixel_attention_mask"], b["spatial_shapes"])

        tokens = vision()

        def merge(b=b, tokens=tokens) -> Any:
            return merge_image_tokens(model.embed_tokens(b["input_ids"]), b["input_ids"], tokens, model.image_token_id)

        embeds = merge()
        out[name] = {
            "vision": timeit(vision, warmup, runs),
            "merge": timeit(merge, warmup, runs),
            "text": timeit(lambda b=b, e=embeds: model.text(e, b["attention_mask"]), warmup, runs),
            "page_end_to_end": timeit(lambda img=img: model(**processor.process_images([img])), warmup, runs),
            "tokens": int(b["attention_mask"].sum()),
            "tiles": int(b["pixel_values"].shape[0]),
        }
    for n, q in queries.items():
        out[f"query_{n}"] = timeit(lambda q=q: model(**processor.process_queries(q)), warmup, runs)
    return out


def maxsim_bench(n_pages: int, rows: int, warmup: int, runs: int, tmp: Path, with_seed: bool) -> dict:
    from runtime import score
    from runtime.stores.local.index import Index, PageRecord

    rng = np.random.default_rng(0)
    docs = []
    for _ in range(n_pages):
        d = rng.standard_normal((rows, 128)).astype(np.float32)
        docs.append((d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float16))
    q = rng.standard_normal((20, 128)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flops = 2 * 20 * n_pages * rows * 128
    res: dict[str, Any] = {"pages": n_pages, "rows": rows, "query_rows": 20, "flops": flops,
                           "doc_bytes_fp16": n_pages * rows * 256}  # fmt: skip
    res["ours"] = timeit(lambda: score([q], docs), warmup, runs)

    def naive() -> Any:
        return [float((q @ d.astype(np.float32).T).max(axis=1).sum()) for d in docs]

    res["naive_loop"] = timeit(naive, 0, 1)
    if with_seed:
        import torch
        from sauerkrautlm_colpali.utils.processing_utils import BaseVisualRetrieverProcessor as P

        tq = [torch.from_numpy(q)]
        tdocs = [torch.from_numpy(d.astype(np.float32)) for d in docs]  # the seed's MTEB path casts to fp32
        res["seed_score_multi_vector"] = timeit(lambda: P.score_multi_vector(tq, tdocs, device="cpu"), warmup, runs)
    identity = {"bundle_path": "-", "bundle_manifest_sha256": "0", "bundle_model": "-",
                "bundle_random_weights": "true", "precision": "-", "dim": "128"}  # fmt: skip
    index = Index.create(tmp / "bench-index", identity)
    with index.writer():
        for start in range(0, n_pages, 500):
            index.add_batch(
                [PageRecord(f"/p/{i}", 1, f"h{i}", 0, docs[i]) for i in range(start, min(n_pages, start + 500))]
            )
    res["index_search"] = timeit(lambda: index.search([q], k=10), warmup, runs)
    index.close()
    return res


def fidelity(ref_model: Any, ort_models: dict[str, Any], processor: Any, pages: dict, queries: dict) -> dict:
    from export.parity import compare, topk_agreement
    from runtime import score

    extra = [__import__("export.validate", fromlist=["synthetic_page"]).synthetic_page(512, 400 + 40 * i, seed=30 + i)
             for i in range(4)]  # fmt: skip
    imgs = list(pages.values()) + extra
    qs = [q[0] for q in queries.values()] + ["total amount", "table of contents"]
    ref_p = [ref_model.encode(processor.process_images([im]))[0] for im in imgs]
    ref_q = ref_model.encode(processor.process_queries(qs))
    s_ref = score(ref_q, ref_p)
    out = {}
    for name, m in ort_models.items():
        got_p = []
        for im in imgs:
            b = processor.process_images([im])
            got_p += m.encode_rows(b)
        qb = processor.process_queries(qs)
        got_q = m.encode_rows(qb)
        fp, fq = compare(ref_p, got_p), compare(ref_q, got_q)
        out[name] = {"pages": fp.as_dict(), "queries": fq.as_dict(),
                     "top5_agreement": topk_agreement(s_ref, score(got_q, got_p), 5)}  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------


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
    pages, queries = _inputs(processor)
    result: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["machine"] = machine(a.threads)
    result["config"] = {"model": a.model, "bundle": str(bundle), "runs": a.runs, "warmup": a.warmup,
                        "threads": a.threads, "pages": PAGES, "query_tokens": QUERY_TOKENS,
                        "maxsim_pages": a.maxsim_pages}  # fmt: skip
    print("[bench] measuring GEMM peaks and copy bandwidth ...", flush=True)
    result["gemm_peaks"] = gemm_peaks(a.threads)
    result["gemm_peak_gflops"] = result["gemm_peaks"]["fp32"]
    result["copy_gbs"] = copy_bandwidth()
    result["read_gbs"] = read_bandwidth(a.threads)
    result["flops"] = stage_flops(bundle, {n: None for n in PAGES}, pages, processor, QUERY_TOKENS)
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


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# collfm2-edge benchmark ({result['created']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, GPU: {m['gpu'] or 'none'}; "
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
        f"{mr['ours_gb_per_s']:.2f} GB/s of fp16 vectors); seed score_multi_vector "
        f"{ms.get('seed_score_multi_vector', {}).get('p50_ms', float('nan')):.0f} ms "
        f"({mr['ours_vs_seed'] or float('nan'):.1f}x slower than ours); "
        f"naive loop {ms['naive_loop']['p50_ms']:.0f} ms; "
        f"index search {ms['index_search']['p50_ms']:.0f} ms ({mr['index_gflops']:.1f} GFLOP/s = "
        f"{mr['index_fraction_of_gemm_peak']:.0%} of GEMM peak, {mr['index_vs_seed'] or float('nan'):.1f}x faster "
        "than the seed).",
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
    ap.add_argument("--maxsim-pages", type=int, default=10_000)
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="PyTorch eager bf16: auto (where the CPU has bf16 instructions), on (always; emulated bf16 "
                    "is slow, but the branch runs on every CPU), off")  # fmt: skip
    ap.add_argument("--no-bf16", dest="bf16", action="store_const", const="off", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--name", default=None, help="file stem (default: bench-<model>-<cpu count>cpu)")
    a = ap.parse_args(argv)
    result = run(a)
    stem = a.name or f"bench-{Path(a.model).name}-{os.cpu_count()}cpu"
    write_results(result, Path(a.out_dir), stem, markdown(result))
    return 0


def write_results(result: dict[str, Any], out: Path, stem: str, table: str, title: str | None = None) -> None:
    """``stem``.json, .md and (with matplotlib) .png under ``out``; the table is also printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    plotted = plot(result, out / f"{stem}.png", title=title)
    print(table)
    print(f"wrote {out / stem}.json, .md" + (", .png" if plotted else " (no plot: pip install matplotlib)"))


if __name__ == "__main__":
    sys.exit(main())
