"""The two exported graphs, as torch modules over the reference model's own submodules.

The split is reference doc section 7. Everything data-dependent in upstream's forward (position
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
from collections.abc import Iterator

import torch
from torch import nn

from .reference import ColLFM2Reference

__all__ = ["MASK_VALUE", "TextGraph", "VisionGraph", "attention"]

# Additive attention-mask value for masked keys. -1e4 rather than finfo.min: it is finite in
# fp16 (finfo(fp32).min overflows to -inf there, and a row of -inf gives NaN through softmax), and
# exp(-1e4) is exactly 0 in fp32, so unmasked rows are unchanged. One value for every precision,
# so the fp16 and int8 graphs derive from the fp32 graph without touching the mask.
MASK_VALUE = -1.0e4


@contextlib.contextmanager
def attention(model: ColLFM2Reference, implementation: str) -> Iterator[None]:
    """Switch the attention implementation of every sub-config for the duration of a block.

    Export traces ``eager``: plain MatMul/Softmax with our additive mask and transformers' fp32
    softmax, which the fp16 recipe relies on. SDPA would export a fused pattern whose handling
    of fully padded rows differs (reference doc section 6.6). The reference keeps SDPA.
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
        pos_weights: torch.Tensor,  # [B, N, G*G] interpolation weights (runtime.image.position_weights)
        unshuffle_index: torch.Tensor,  # [B, T, f*f] patch rows of each token (runtime.image.unshuffle_index)
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
        # all-ones shortcuts, reference doc section 6.5) never sees the trace.
        causal = torch.ones(s, s, dtype=torch.bool, device=keep.device).tril()
        allowed = causal[None, None] & (keep[:, None, None, :] > 0)  # [B, 1, S, S]
        additive = torch.where(allowed, 0.0, MASK_VALUE).to(inputs_embeds.dtype)
        masks = {"full_attention": additive, "conv": keep}  # conv layers zero padded states
        h = self.language_model(inputs_embeds=inputs_embeds, attention_mask=masks, use_cache=False).last_hidden_state
        e = self.head(h)  # [B, S, 128]
        norm = torch.linalg.vector_norm(e, dim=-1, keepdim=True)
        # Padded rows: upstream gives 0/0 there under SDPA; we give exact zeros (see reference.py).
        return torch.where(keep[..., None] > 0, e / norm, 0.0)
