"""Validation against the PyTorch reference: the grid, the reference outputs, and the checks.

The grid (`export.grid`): one 512x512 tile, one 26x36-patch tile, a tiled A4 page with thumbnail, and
a left-padded batch of queries of 1..64 tokens (plus one padded query alone, the batch-1 case
where transformers 4.57 dropped the conv padding mask). Reference outputs come from transformers'
own modules with their own masking (SDPA), not from our export wrappers, so a wrapper bug shows.

Every comparison goes through ``export.parity.compare``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from runtime import ColLFM2, ColLFM2Processor
from runtime.bundle.contract import TEXT, VISION
from runtime.encoder.model import merge_image_tokens
from runtime.parity import Fidelity, compare, fidelity_report
from runtime.sessions import ort_session

from .grid import synthetic_page, validation_inputs
from .recipes import Gate
from .reference import ColLFM2Reference

__all__ = [
    "GraphCase",
    "ReferenceSet",
    "calibration_inputs",
    "graph_fidelity",
    "pipeline_report",
    "reference_set",
    "validation_inputs",
    "write_selftest_probe",
]


def calibration_inputs(processor: ColLFM2Processor) -> tuple[dict[str, Image.Image], list[str]]:
    """A different set of pages and queries, for static quantisation (never the validation grid)."""
    from .demo import QUERIES, SAMPLE_PAGES, render_page

    pages = {name: render_page(lines) for name, lines in SAMPLE_PAGES.items()}
    pages["scan-2tiles"] = synthetic_page(700, 1300, seed=11)
    return pages, list(QUERIES)


@dataclass
class GraphCase:
    """One feed of a graph and the reference output; ``mask`` [B, T] marks the rows to compare."""

    name: str
    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    mask: np.ndarray


@dataclass
class ReferenceSet:
    vision: list[GraphCase] = field(default_factory=list)
    text: list[GraphCase] = field(default_factory=list)
    page_batches: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    query_batch: dict[str, np.ndarray] = field(default_factory=dict)
    page_embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # real rows [n, 128]
    query_embeddings: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0


def model_numbers(model: ColLFM2Reference, processor: ColLFM2Processor) -> dict[str, Any]:
    """The manifest's ``model`` section: what the runtime and the graph contract compute with."""
    cfg = model.config
    factor = cfg.downsample_factor
    return {
        "image_token_id": cfg.image_token_id,
        "hidden_size": cfg.text_config.hidden_size,
        "vocab_size": cfg.text_config.vocab_size,
        "dim": model.custom_text_proj.out_features,
        "downsample_factor": factor,
        "max_num_patches": processor.config.max_num_patches,
        "tokens_per_tile": processor.config.max_num_patches // factor**2,
        "position_grid": round(cfg.vision_config.num_patches**0.5),
        # Patch counts the vision graph is run at (multiples of 256 up to the maximum).
        "patch_buckets": [n for n in (256, 512, 768, 1024) if n < processor.config.max_num_patches]
        + [processor.config.max_num_patches],
        "patch_dim": cfg.vision_config.num_channels * cfg.vision_config.patch_size**2,
    }


@torch.inference_mode()
def _text_reference(model: ColLFM2Reference, embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' LFM2 backbone with its own masking, then the head and L2 norm."""
    h = model.model.language_model(
        inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask), use_cache=False
    ).last_hidden_state
    e = model.custom_text_proj(h)
    e = e / e.norm(dim=-1, keepdim=True)
    return torch.nan_to_num(e * torch.from_numpy(mask)[..., None].to(e.dtype)).numpy()


@torch.inference_mode()
def reference_set(
    model: ColLFM2Reference,
    processor: ColLFM2Processor,
    pages: dict[str, Image.Image],
    queries: list[str],
    full_pipeline: bool = True,
    text_outputs: bool = True,
) -> ReferenceSet:
    """Run the reference once over the inputs; every candidate graph is compared with this.

    ``text_outputs=False`` skips the text graph's reference outputs (their ``reference`` is
    empty): calibration needs only the feeds, and a text forward per page is wasted work there.
    """
    t0 = time.perf_counter()

    def text_ref(embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return _text_reference(model, embeds, mask) if text_outputs else np.empty(0, np.float32)

    cfg = model.config
    numbers = model_numbers(model, processor)
    max_tokens = numbers["tokens_per_tile"]
    table = model.model.language_model.embed_tokens.weight.detach().float().numpy()
    out = ReferenceSet()
    for name, image in pages.items():
        batch = processor.process_images([image])
        out.page_batches[name] = batch
        feats = model.model.get_image_features(
            pixel_values=torch.from_numpy(batch["pixel_values"]),
            spatial_shapes=torch.from_numpy(batch["spatial_shapes"]),
            pixel_attention_mask=torch.from_numpy(batch["pixel_attention_mask"]),
        ).pooler_output  # per tile [n_tok, D]
        shapes = [(int(h), int(w)) for h, w in batch["spatial_shapes"]]
        max_patches = batch["pixel_values"].shape[1]
        feeds = VISION.feeds(None, batch["pixel_values"], batch["pixel_attention_mask"], shapes, max_patches,
                             numbers=numbers)  # fmt: skip
        n_units = len(feats)
        ref = np.zeros((n_units, max_tokens, feats[0].shape[-1]), np.float32)
        mask = np.zeros((n_units, max_tokens), bool)
        for u, f in enumerate(feats):
            ref[u, : f.shape[0]] = f.float().numpy()
            mask[u, : f.shape[0]] = True
        out.vision.append(GraphCase(f"vision/{name}", feeds, ref, mask))
        ids = batch["input_ids"]
        embeds = table[ids]
        merge_image_tokens(embeds, ids, np.concatenate([f.float().numpy() for f in feats]), cfg.image_token_id)
        am = batch["attention_mask"].astype(np.int64)
        out.text.append(
            GraphCase(
                f"text/{name}",
                TEXT.feeds(None, embeds, am, numbers=numbers),
                text_ref(embeds, am),
                am > 0,
            )
        )
        if full_pipeline:
            out.page_embeddings[name] = model.encode(batch)[0]
    qb = processor.process_queries(queries)
    out.query_batch = qb
    ids, am = qb["input_ids"], qb["attention_mask"].astype(np.int64)
    embeds = table[ids]
    out.text.append(
        GraphCase("text/queries", TEXT.feeds(None, embeds, am, numbers=numbers), text_ref(embeds, am), am > 0)
    )
    # Batch of one that still carries left padding: the shape where 4.57 dropped the conv mask.
    one = slice(0, 1)
    out.text.append(
        GraphCase(
            "text/query-batch1-padded",
            TEXT.feeds(None, embeds[one], am[one], numbers=numbers),
            text_ref(embeds[one], am[one]),
            am[one] > 0,
        )
    )
    if full_pipeline:
        out.query_embeddings = model.encode(qb)
    out.seconds = time.perf_counter() - t0
    return out


# What ``python -m runtime selftest`` runs on the device: small enough for a Raspberry Pi to check
# in seconds, and covering a full tile and a smaller patch-count bucket, short and long queries.
SELFTEST_PAGES = {"page-512x512.png": (512, 512, 31), "page-300x700.png": (300, 700, 32)}
SELFTEST_QUERIES = ("net income", "total amount due on the invoice", "x")


@torch.inference_mode()
def write_selftest_probe(model: ColLFM2Reference, processor: ColLFM2Processor, dst: Path) -> dict[str, Any]:
    """Write probe pages and the reference's embeddings of them under ``dst`` (bundle-relative
    paths in the returned manifest entry). The pages are PNG files, so the device decodes exactly
    what the reference saw."""
    dst.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    pages = []
    for i, (name, (h, w, seed)) in enumerate(SELFTEST_PAGES.items()):
        synthetic_page(h, w, seed=seed).save(dst / name)
        batch = processor.process_images([dst / name])
        arrays[f"page_{i}"] = model.encode(batch)[0].astype(np.float32)
        pages.append(f"{dst.name}/{name}")
    for i, emb in enumerate(model.encode(processor.process_queries(list(SELFTEST_QUERIES)))):
        arrays[f"query_{i}"] = emb.astype(np.float32)
    np.savez(dst / "reference.npz", **arrays)
    return {"pages": pages, "queries": list(SELFTEST_QUERIES), "reference": f"{dst.name}/reference.npz"}


def graph_fidelity(session: ort.InferenceSession, cases: list[GraphCase]) -> tuple[Fidelity, dict[str, Fidelity]]:
    """Run ``session`` on each case; overall and per-case fidelity over the masked rows."""
    refs, cands, per_case = [], [], {}
    for case in cases:
        got = session.run(None, case.feeds)[0]
        refs.append(case.reference[case.mask])
        cands.append(got[case.mask])
        per_case[case.name] = compare(case.reference[case.mask], got[case.mask])
    return compare(refs, cands), per_case


def pipeline_report(model: ColLFM2, ref: ReferenceSet, gate: Gate) -> dict[str, Any]:
    """Whole runtime pipeline (ORT CPU) vs the reference: embeddings, MaxSim and ranking."""
    pages, refs = [], []
    for name, batch in ref.page_batches.items():
        pages += model.encode_rows(batch)
        refs.append(ref.page_embeddings[name])
    queries = model.encode_rows(ref.query_batch)
    return fidelity_report(refs, ref.query_embeddings, pages, queries, gate)


def load_session(
    path: Path, threads: int | None = None, session_config: Sequence[tuple[str, str]] = ()
) -> ort.InferenceSession:
    """A CPU session over ``path`` with the recipe's session settings (``Recipe.session_config``),
    made as the runtime makes it (``runtime.sessions``: no memory arena), so the gate measures the
    sessions the device runs."""
    return ort_session(path, threads, session_config)


Progress = Callable[[str], None]
