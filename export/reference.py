"""The PyTorch reference: transformers' own LFM2-VL plus ColLFM2's 128-d head.

This is the ground truth of every parity test. It computes what sauerkrautlm-colpali's
``ColLFM2.forward`` computes (docs/reference.md §2)::

    h = Lfm2VlModel(...).last_hidden_state       # [B, L, 1024], after the final RMSNorm
    e = custom_text_proj(h)                      # Linear(1024 -> 128, bias)
    e = e / ||e||_2                              # per row, no epsilon
    e = e * attention_mask[..., None]            # all tokens kept

with one deliberate difference: a padded row is set to exactly 0. Upstream divides by the norm
first, and with SDPA a fully masked (left-padded) row can come out of the backbone as 0, so 0/0
gives NaN and NaN * 0 stays NaN (docs/reference.md §6.6). Real rows are untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._compat import patch_torchvision

patch_torchvision()

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Lfm2VlConfig  # noqa: E402
from transformers.models.lfm2_vl.modeling_lfm2_vl import Lfm2VlModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

# LFM2's short conv warns once per process that the optional CUDA `causal_conv1d` kernel is
# missing and it uses the PyTorch implementation. That implementation is the one we want as the
# reference (docs/reference.md §6.5), so the warning is noise here.
hf_logging.get_logger("transformers.integrations.hub_kernels").setLevel(hf_logging.ERROR)

__all__ = ["HEAD_DIM", "ColLFM2Reference", "build_config", "pick_device"]

HEAD_DIM = 128  # upstream hard-codes dim = 128 and ignores config.json's "dim"


def build_config(base: dict[str, Any], attn_implementation: str = "sdpa") -> Lfm2VlConfig:
    """An ``Lfm2VlConfig`` from a base architecture dict (a hub ``config.json``)."""
    data = {k: v for k, v in base.items() if not k.startswith("_")}
    config = Lfm2VlConfig(**data)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    return config


class ColLFM2Reference(nn.Module):
    """ColLFM2 for retrieval: ``model`` (Lfm2VlModel, no lm_head) + ``custom_text_proj``.

    Parameter names equal the published checkpoint's keys (5.x vision naming):
    ``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``,
    ``custom_text_proj.{weight,bias}``.
    """

    def __init__(self, config: Lfm2VlConfig, dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.config = config
        self.model = Lfm2VlModel(config)
        self.custom_text_proj = nn.Linear(config.text_config.hidden_size, dim)
        with torch.no_grad():  # upstream's ColPali init: N(0, 0.02), zero bias
            nn.init.normal_(self.custom_text_proj.weight, std=0.02)
            nn.init.zeros_(self.custom_text_proj.bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-> embeddings [B, L, 128] in the model dtype; padded rows are exactly 0."""
        kwargs: dict[str, Any] = {}
        if pixel_values is not None:
            kwargs.update(
                pixel_values=pixel_values.to(self.dtype),
                pixel_attention_mask=pixel_attention_mask,
                spatial_shapes=spatial_shapes,
            )
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True, **kwargs
        )
        proj = self.custom_text_proj(out.last_hidden_state)
        proj = proj / proj.norm(dim=-1, keepdim=True)
        keep = attention_mask[..., None].to(proj.dtype)
        proj = proj * keep
        return torch.where(keep.bool(), proj, torch.zeros((), dtype=proj.dtype, device=proj.device))

    @torch.inference_mode()
    def encode(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run a processor batch (numpy, from ``runtime.ColLFM2Processor``) -> per-item [n, 128]
        float32 arrays holding the real rows only."""
        dev = self.device
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in batch.items()}
        emb = self(**tensors).float().cpu().numpy()
        mask = batch["attention_mask"].astype(bool)
        return [emb[i][mask[i]] for i in range(emb.shape[0])]


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA when present (fp32 or bf16), else CPU fp32; explicit choices are honoured."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but torch.cuda.is_available() is False")
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype is not None and dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return dev, names[dtype] if dtype else torch.float32
