"""``ColLFM2Processor``: a torch-free mirror of sauerkrautlm-colpali's processor.

Same method names, keys, dtypes and batch layout as upstream ``ColLFM2Processor``, with numpy
arrays instead of torch tensors::

    process_images -> input_ids [B, L] int64 (right-padded with 0, as upstream collates),
                      attention_mask [B, L] int64,
                      pixel_values [N_units, 1024, 768] float32,
                      pixel_attention_mask [N_units, 1024] int32,
                      spatial_shapes [N_units, 2] int64
    process_queries -> input_ids, attention_mask [B, L] int64 (left-padded, BOS first)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError, InputError, ModelFilesError
from ..scoring import ArrayOrList
from ..scoring import score as _score
from ..workers import parallel_map, split_range
from .config import DECODE_MODES, TILE_LABEL_ORDERS, PreprocessConfig
from .image import (
    ImagePlan,
    ImageSource,
    decode_image,
    describe_source,
    make_units,
    normalize_patchify,
    plan_image,
)
from .layout import Layout, page_layout
from .text import MAX_QUERY_TOKENS, TextTokenizer, pad_batch

__all__ = ["ColLFM2Processor", "ProcessedPage", "collate_pages", "real_rows"]


@dataclass
class ProcessedPage:
    """One image, preprocessed: its ids, its units' patches and the plan that produced them."""

    input_ids: np.ndarray  # [L] int64
    pixel_values: np.ndarray  # [n_units, max_patches, patch_dim] float32
    pixel_attention_mask: np.ndarray  # [n_units, max_patches] int32
    spatial_shapes: np.ndarray  # [n_units, 2] int64
    plan: ImagePlan = field(repr=False)
    layout: Layout = ()  # per unit: (first row, token grid h, w) of its image tokens in input_ids


class ColLFM2Processor:
    """Preprocessing and scoring for ColLFM2 with numpy, Pillow and tokenizers only."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        config: PreprocessConfig,
        decode: str = "corrected",
        max_query_tokens: int = MAX_QUERY_TOKENS,
    ) -> None:
        if decode not in DECODE_MODES:
            raise InputError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.tokenizer = tokenizer
        self.config = config
        self.decode = decode
        self.max_query_tokens = max_query_tokens

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        decode: str = "corrected",
        tile_labels: str = "5.x",
        **overrides: object,
    ) -> ColLFM2Processor:
        """Load from a checkpoint directory or an export bundle (both hold the processor files).

        ``decode="upstream"`` reproduces sauerkrautlm-colpali's bare ``convert("RGB")``;
        ``"corrected"`` (default) also honours EXIF orientation, 16-bit depth and alpha.
        ``tile_labels="4.57"`` labels non-square grids the way transformers 4.57 did.
        Keyword overrides (e.g. ``use_thumbnail=False``) replace preprocessor config values.
        """
        path = Path(path)
        if not path.is_dir():
            raise ModelFilesError(f"{path}: not a directory (expected a ColLFM2 checkpoint or bundle)")
        if tile_labels not in TILE_LABEL_ORDERS:
            raise InputError(f"tile_labels must be one of {TILE_LABEL_ORDERS}, got {tile_labels!r}")
        config = PreprocessConfig.from_dir(path)
        if overrides:
            unknown = sorted(set(overrides) - set(config.__dict__))
            if unknown:
                raise InputError(f"unknown preprocessor option(s): {', '.join(unknown)}")
            config = PreprocessConfig.from_dict({**config.__dict__, **overrides})
        return cls(TextTokenizer.from_dir(path, tile_labels=tile_labels), config, decode=decode)

    # -- images --------------------------------------------------------------------------

    def process_image(self, image: ImageSource, name: str | None = None) -> ProcessedPage:
        """Preprocess one image (a path, bytes, PIL image or HxWx3 uint8 array). Errors name it
        ``name`` (default: its path, or its kind)."""
        name = name or describe_source(image)
        rgb = decode_image(image, self.decode, name)
        try:
            plan = plan_image(rgb.shape[0], rgb.shape[1], self.config)
        except ImageError as exc:  # name the file, as decode errors do
            raise ImageError(f"{name}: {exc}") from exc
        units = make_units(rgb, plan)
        cfg = self.config
        pixel_values = np.empty((len(units), cfg.max_num_patches, cfg.patch_dim), dtype=np.float32)
        mask = np.zeros((len(units), cfg.max_num_patches), dtype=np.int32)
        shapes = np.zeros((len(units), 2), dtype=np.int64)

        def normalize(span: tuple[int, int]) -> None:
            for k in range(*span):
                ph, pw = normalize_patchify(units[k], cfg, pixel_values[k])
                mask[k, : ph * pw] = 1
                shapes[k] = (ph, pw)

        # Memory-bound casts and divides over ~3 MB per unit: one run of units per core.
        parallel_map(normalize, split_range(len(units)))
        ids = self.tokenizer.document_ids(plan)
        layout = page_layout(ids, shapes, self.tokenizer.ids["image"], cfg.downsample_factor)
        return ProcessedPage(ids, pixel_values, mask, shapes, plan, layout)

    def process_images(self, images: Sequence[ImageSource]) -> dict[str, np.ndarray]:
        """Batch of images -> upstream's keys. Raises ``InputError`` naming the bad image."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]  # type: ignore[list-item]
        if len(images) == 0:
            raise InputError("no images given")
        pages = [self.process_image(img) for img in images]
        return collate_pages(pages)

    # -- queries -------------------------------------------------------------------------

    def process_queries(self, queries: Sequence[str] | str) -> dict[str, np.ndarray]:
        """Queries -> ``input_ids``/``attention_mask`` [B, L] int64, BOS first, left-padded."""
        if isinstance(queries, str):
            queries = [queries]
        if len(queries) == 0:
            raise InputError("no queries given")
        seqs = [self.tokenizer.query_ids(q, self.max_query_tokens) for q in queries]
        ids, mask = pad_batch(seqs, self.tokenizer.pad_id, side="left")
        return {"input_ids": ids, "attention_mask": mask}

    process_texts = process_queries

    # -- scoring -------------------------------------------------------------------------

    @staticmethod
    def score(query_embeddings: ArrayOrList, doc_embeddings: ArrayOrList, mode: str = "exact") -> np.ndarray:
        """MaxSim [n_queries, n_docs]; see :func:`runtime.scoring.score`."""
        return _score(query_embeddings, doc_embeddings, mode=mode)


def collate_pages(pages: Sequence[ProcessedPage]) -> dict[str, np.ndarray]:
    """Upstream's collation: ids right-padded with 0, pixel arrays concatenated over units."""
    ids, mask = pad_batch([p.input_ids for p in pages], 0, side="right")
    if len(pages) == 1:  # skip a copy of ~3 MB per unit
        page = pages[0]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": page.pixel_values,
            "pixel_attention_mask": page.pixel_attention_mask,
            "spatial_shapes": page.spatial_shapes,
        }
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": np.concatenate([p.pixel_values for p in pages], axis=0),
        "pixel_attention_mask": np.concatenate([p.pixel_attention_mask for p in pages], axis=0),
        "spatial_shapes": np.concatenate([p.spatial_shapes for p in pages], axis=0),
    }


def real_rows(embeddings: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
    """The inverse of the collation: a padded batch [B, L, D] -> each item's real rows [n_i, D]
    (contiguous copies), the rows ``attention_mask`` marks."""
    mask = np.asarray(attention_mask) > 0
    return [np.ascontiguousarray(embeddings[i][mask[i]]) for i in range(embeddings.shape[0])]
