"""Token ids for documents and queries, with the ``tokenizers`` library only.

Documents (docs/reference.md §4) use the upstream visual prompt with no BOS, and each
``<image>`` expanded per unit::

    <|im_start|>user\\n<|image_start|>
        [<|img_row_R_col_C|><image>*256 ...][<|img_thumbnail|><image>*n]   (tiled)
        or <image>*n                                                       (single unit)
    <|image_end|>Describe the image.<|im_end|>

Queries are ``tokenizer(text)`` with special tokens (BOS) and left padding, as upstream's
``process_queries``. Added special tokens split the text before the model sees it, so the ids of
a document are the ids of its text segments laid end to end; we assemble them instead of
tokenising a 1,800-token string of placeholders, and the tests check that against transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..errors import ModelFilesError, QueryError
from .image import ImagePlan

__all__ = ["MAX_QUERY_TOKENS", "SPECIAL_TOKENS", "VISUAL_PROMPT", "TextTokenizer", "has_visible_text"]

VISUAL_PROMPT = "<|im_start|>user\n<image>Describe the image.<|im_end|>"
# Upstream passes max_length=2048 without truncation, i.e. it meant queries to stay below this.
MAX_QUERY_TOKENS = 2048

SPECIAL_TOKENS = {
    "pad": "<|pad|>",
    "bos": "<|startoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "image": "<image>",
    "image_start": "<|image_start|>",
    "image_end": "<|image_end|>",
    "thumbnail": "<|img_thumbnail|>",
}


def tile_label(row: int, col: int) -> str:
    return f"<|img_row_{row}_col_{col}|>"


@dataclass
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids the ColLFM2 templates need."""

    tokenizer: Tokenizer
    ids: dict[str, int]
    tile_labels: str = "5.x"

    @classmethod
    def from_dir(cls, path: str | Path, tile_labels: str = "5.x") -> TextTokenizer:
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ModelFilesError(f"{path}: no tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises a bare Exception subclass
            raise ModelFilesError(f"{file}: cannot load tokenizer ({exc})") from exc
        names = dict(SPECIAL_TOKENS)
        # tokenizer_config.json may rename the image tokens (transformers reads them from there).
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as exc:
                raise ModelFilesError(f"{cfg_file}: invalid JSON ({exc})") from exc
            if not isinstance(cfg, dict):
                raise ModelFilesError(f"{cfg_file}: expected a JSON object, got a {type(cfg).__name__}")
            extra = cfg.get("extra_special_tokens") or {}
            if isinstance(extra, dict):
                for key, name in (("image_token", "image"), ("image_start_token", "image_start"),
                                  ("image_end_token", "image_end"), ("image_thumbnail", "thumbnail")):  # fmt: skip
                    if isinstance(extra.get(key), str):
                        names[name] = extra[key]
            if isinstance(cfg.get("pad_token"), str):
                names["pad"] = cfg["pad_token"]
            if isinstance(cfg.get("bos_token"), str):
                names["bos"] = cfg["bos_token"]
        ids = {}
        for key, token in names.items():
            tid = tok.token_to_id(token)
            if tid is None:
                raise ModelFilesError(f"{file}: special token {token!r} is missing")
            ids[key] = tid
        return cls(tok, ids, tile_labels)

    # -- documents -----------------------------------------------------------------------

    def _encode_plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise ModelFilesError(f"tokenizer has no token {token!r}")
        return tid

    def image_placeholder_ids(self, plan: ImagePlan) -> list[int]:
        """The ids that replace one ``<image>`` in the prompt."""
        image = self.ids["image"]
        ids = [self.ids["image_start"]]
        if plan.tiled and (plan.grid_rows > 1 or plan.grid_cols > 1):
            # transformers 4.57 swapped rows and cols when labelling; 5.x fixed it. Same pixels,
            # same tile order; only the label tokens differ (docs/reference.md §0).
            rows, cols = (
                (plan.grid_rows, plan.grid_cols) if self.tile_labels == "5.x" else (plan.grid_cols, plan.grid_rows)
            )
            per_tile = plan.tokens_per_tile
            for r in range(rows):
                for c in range(cols):
                    ids.append(self.token_id(tile_label(r + 1, c + 1)))
                    ids.extend([image] * per_tile)
            if plan.thumbnail:
                ids.append(self.ids["thumbnail"])
                ids.extend([image] * plan.tokens_for_image)
        else:
            ids.extend([image] * plan.tokens_for_image)
        ids.append(self.ids["image_end"])
        return ids

    def document_ids(self, plan: ImagePlan) -> np.ndarray:
        before, after = VISUAL_PROMPT.split(SPECIAL_TOKENS["image"])
        ids = self._encode_plain(before) + self.image_placeholder_ids(plan) + self._encode_plain(after)
        return np.asarray(ids, dtype=np.int64)

    # -- queries -------------------------------------------------------------------------

    def query_ids(self, query: str, max_tokens: int = MAX_QUERY_TOKENS) -> np.ndarray:
        if not isinstance(query, str):
            raise QueryError(f"a query must be a string, got {type(query).__name__}")
        if not has_visible_text(query):
            raise QueryError("empty query: type some words to search for")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. from JSON's "\ud800": the tokenizer raises TypeError
            raise QueryError("the query is not valid text (it holds a lone surrogate)") from None
        ids = self.tokenizer.encode(query, add_special_tokens=True).ids
        if len(ids) > max_tokens:
            raise QueryError(f"query is {len(ids)} tokens, over the {max_tokens}-token limit; shorten it")
        return np.asarray(ids, dtype=np.int64)

    @property
    def pad_id(self) -> int:
        return self.ids["pad"]


def pad_batch(sequences: list[np.ndarray], pad_id: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack 1-D id arrays into ``(input_ids, attention_mask)`` [B, L] int64, padded on ``side``."""
    length = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        if side == "left":
            ids[i, length - n :] = seq
            mask[i, length - n :] = 1
        else:
            ids[i, :n] = seq
            mask[i, :n] = 1
    return ids, mask


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character that shows: a query of spaces, zero-width joiners or bidi
    marks alone (categories Z*, Cc, Cf) would be searched as if it said something."""
    import unicodedata

    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf", "Zs", "Zl", "Zp") for c in text)
