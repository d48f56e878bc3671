"""The two exported graphs, as torch modules over the reference model's own submodules.

The split is docs/reference.md §7. Everything data-dependent in upstream's forward (position
interpolation sizes, per-image unpadding, the ``<image>`` scatter) moves to numpy in the runtime,
so both graphs are static apart from their batch and sequence axes:

* ``VisionGraph``: pixel_values [B, N, 768] f32, pixel_attention_mask [B, N] i64,
  pos_weights [B, N, G*G] f32, unshuffle_index [B, T, 4] i64 -> image_tokens [B, T, D]
  (N = 1024 patches, G = 16, T = 256 tokens, D = text hidden size). Row t of a tile is real
  iff t < (ph/2)(pw/2).
* ``TextGraph``: inputs_embeds [B, S, D] f32, attention_mask [B, S] i64 -> embeddings [B, S, 128],
  L2-normalised per row, padded rows exactly 0.

Both call transformers' modules (SigLIP2 encoder layers, LFM2 decoder layers, projector), so the
maths is upstream's; only the glue differs, and it is checked against the reference in tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.models.lfm2.modeling_lfm2 import repeat_kv

from .reference import ColLFM2Reference

__all__ = ["EXPORT_ATTENTION", "MASK_VALUE", "TextGraph", "VisionGraph", "attention", "grouped_attention"]

# Additive attention-mask value for masked keys. -1e4 rather than finfo.min: it is finite in
# fp16 (finfo(fp32).min overflows to -inf there, and a row of -inf gives NaN through softmax), and
# exp(-1e4) is exactly 0 in fp32, so unmasked rows are unchanged. One value for every precision,
# so the fp16 and int8 graphs derive from the fp32 graph without touching the mask.
MASK_VALUE = -1.0e4


# Heads per group are at most num_heads / ATTENTION_GROUPS (fewer groups when the KV heads do not
# divide evenly). 4 puts an A4 page's text scores at 52 MB per group instead of 207 MB.
ATTENTION_GROUPS = 4


def _groups(n_kv_heads: int) -> int:
    """The most groups, up to ``ATTENTION_GROUPS``, that split the KV heads evenly."""
    return max(g for g in range(1, ATTENTION_GROUPS + 1) if n_kv_heads % g == 0)


def grouped_attention(
    module: nn.Module,
    query: torch.Tensor,  # [B, H, S, d]
    key: torch.Tensor,  # [B, H_kv, S_k, d]
    value: torch.Tensor,  # [B, H_kv, S_k, d]
    attention_mask: torch.Tensor | None,  # additive, broadcast over heads
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' eager attention (SigLIP2 and LFM2 alike), computed a group of heads at a time.

    Eager attention materialises [B, H, S, S] scores several times over (the product, the
    masked sum, the softmax): ~207 MB each for an A4 page's 1,800 text tokens, and the run's
    peak memory. Heads are independent, so the export concatenates per-group results; ONNX
    Runtime runs each group to its end before the next (its order follows the graph back from
    the output) and frees its scores, cutting that peak to a quarter. Per row the arithmetic is
    eager's: the same products, mask and fp32 softmax. A power-of-two ``scaling`` (head dim 64:
    1/8) is applied to the queries instead of the S x S scores, which is exact and one pass over
    S*d values instead of S*S.
    """
    n_heads, n_kv = query.shape[1], key.shape[1]
    rep = n_heads // n_kv
    groups = _groups(n_kv)
    kv_per = n_kv // groups
    exact_fold = math.frexp(scaling)[0] == 0.5
    if exact_fold:
        query = query * scaling
    outs = []
    for g in range(groups):
        q = query[:, g * kv_per * rep : (g + 1) * kv_per * rep]
        k = key[:, g * kv_per : (g + 1) * kv_per]
        v = value[:, g * kv_per : (g + 1) * kv_per]
        if rep > 1:  # GQA: each KV head serves ``rep`` consecutive query heads
            k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        w = torch.matmul(q, k.transpose(2, 3))
        if not exact_fold:
            w = w * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        outs.append(torch.matmul(w, v))
    out = torch.cat(outs, dim=1) if groups > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


# The attention the graphs are traced with (see ``attention``).
EXPORT_ATTENTION = "collfm2_grouped"
AttentionInterface.register(EXPORT_ATTENTION, grouped_attention)


@contextlib.contextmanager
def attention(model: ColLFM2Reference, implementation: str) -> Iterator[None]:
    """Switch the attention implementation of every sub-config for the duration of a block.

    Export traces ``EXPORT_ATTENTION`` (eager's arithmetic, a group of heads at a time): plain
    MatMul/Softmax with our additive mask and transformers' fp32 softmax, which the fp16 recipe
    relies on. SDPA would export a fused pattern whose handling of fully padded rows differs
    (docs/reference.md §6.6). The reference keeps SDPA.
    """
    configs = (model.config, model.config.text_config, model.config.vision_config)
    saved = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = implementation
    try:
        yield
    finally:
        for c, impl in zip(configs, saved, strict=True):
            c._attn_implementation = impl


class VisionGraph(nn.Module):
    """SigLIP2 encoder + post-LayerNorm + pixel unshuffle + projector over a batch of tiles."""

    def __init__(self, model: ColLFM2Reference) -> None:
        super().__init__()
        vt = model.model.vision_tower
        self.patch_embedding = vt.embeddings.patch_embedding
        self.position_embedding = vt.embeddings.position_embedding  # [G*G, C] table
        self.encoder = vt.encoder
        self.post_layernorm = vt.post_layernorm
        self.projector = model.model.multi_modal_projector

    def forward(
        self,
        pixel_values: torch.Tensor,  # [B, N, 3*p*p]
        pixel_attention_mask: torch.Tensor,  # [B, N] 1 = real patch
        pos_weights: torch.Tensor,  # [B, N, G*G] interpolation weights (runtime.preprocess.image.position_weights)
        unshuffle_index: torch.Tensor,  # [B, T, f*f] patch rows of each token (preprocess.image.unshuffle_index)
    ) -> torch.Tensor:
        x = self.patch_embedding(pixel_values)  # [B, N, C]
        # Upstream resizes the G x G table with antialiased bilinear interpolation; that is a
        # linear map, precomputed per tile shape in numpy.
        x = x + torch.matmul(pos_weights, self.position_embedding.weight)
        keep = pixel_attention_mask.to(x.dtype)[:, None, None, :]  # [B, 1, 1, N] keys
        mask = (1.0 - keep) * MASK_VALUE
        x = self.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        x = self.post_layernorm(x)  # [B, N, C]
        b, t, ff = unshuffle_index.shape
        idx = unshuffle_index.reshape(b, t * ff, 1).expand(b, t * ff, x.shape[-1])
        tokens = torch.gather(x, 1, idx).reshape(b, t, ff * x.shape[-1])  # [B, T, f*f*C]
        p = self.projector
        if p.use_layer_norm:
            tokens = p.layer_norm(tokens)
        return p.linear_2(p.act(p.linear_1(tokens)))  # [B, T, D]


class TextGraph(nn.Module):
    """LFM2 backbone (no cache) + final norm + head + L2 norm, padded rows zeroed."""

    def __init__(self, model: ColLFM2Reference) -> None:
        super().__init__()
        self.language_model = model.model.language_model
        self.head = model.custom_text_proj

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        s = inputs_embeds.shape[1]
        keep = attention_mask.to(inputs_embeds.dtype)  # [B, S]
        # Causal + key-padding mask built here, so transformers' mask factory (and its batch-1 or
        # all-ones shortcuts, docs/reference.md §6.5) never sees the trace.
        causal = torch.ones(s, s, dtype=torch.bool, device=keep.device).tril()
        allowed = causal[None, None] & (keep[:, None, None, :] > 0)  # [B, 1, S, S]
        additive = torch.where(allowed, 0.0, MASK_VALUE).to(inputs_embeds.dtype)
        masks = {"full_attention": additive, "conv": keep}  # conv layers zero padded states
        h = self.language_model(inputs_embeds=inputs_embeds, attention_mask=masks, use_cache=False).last_hidden_state
        e = self.head(h)  # [B, S, 128]
        norm = torch.linalg.vector_norm(e, dim=-1, keepdim=True)
        # Padded rows: upstream gives 0/0 there under SDPA; we give exact zeros (see reference.py).
        return torch.where(keep[..., None] > 0, e / norm, 0.0)
