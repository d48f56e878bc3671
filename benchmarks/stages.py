"""Timed stages of a page and a query, per backend: PyTorch eager (on whatever device the model
sits), the runtime's ``ColLFM2`` (vision, merge, text, end to end), pages/s over batches, MaxSim,
and fidelity against the reference through ``export.parity``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import timeit

PAGES = {"512x512": (512, 512), "A4-150dpi": (1754, 1240)}
QUERY_TOKENS = (20, 64)


def inputs(processor: Any) -> tuple[dict[str, Any], dict[int, list[str]]]:
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
        # Upstream sauerkrautlm-colpali's MTEB path casts to fp32.
        tdocs = [torch.from_numpy(d.astype(np.float32)) for d in docs]
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
