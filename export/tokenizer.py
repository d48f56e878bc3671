"""A synthetic LFM2-VL tokenizer for the random presets, built with ``tokenizers``.

Real checkpoints bring their own ``tokenizer.json``; presets have none, so we build a byte-level
BPE whose special tokens sit at the real ids (docs/reference.md §1):

=====================  ======  ====================================================
token                  id      source
=====================  ======  ====================================================
``<|pad|>``            0       real
``<|startoftext|>``    1       real (BOS)
``<|endoftext|>``      2       LFM2 convention
``<|im_start|>``       6       real
``<|im_end|>``         7       real
``<image>``            396     real
``<|img_row_R_col_C|>`` 397-496 chosen: 397 + 10*(R-1) + (C-1), R, C in 1..10
``<|img_thumbnail|>``  497     chosen
``<|image_start|>``    498     real
``<|image_end|>``      499     real
=====================  ======  ====================================================

The gap 397-497 between ``<image>`` and ``<|image_start|>`` holds exactly the 100 tile labels
plus the thumbnail token, which is why we put them there; the real ids are unknown. Other ids
below 500 are ``<|reserved_N|>``. The 256 byte symbols follow at 500-755, then a few merged words
so that the document prompt has a realistic length ("Describe the image." is 4 tokens, giving
266 vectors for a 512x512 page, as with the real tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

__all__ = ["SPECIAL_IDS", "build_synthetic_tokenizer", "tile_label_id", "write_tokenizer_files"]

SPECIAL_IDS = {
    "<|pad|>": 0,
    "<|startoftext|>": 1,
    "<|endoftext|>": 2,
    "<|im_start|>": 6,
    "<|im_end|>": 7,
    "<image>": 396,
    "<|img_thumbnail|>": 497,
    "<|image_start|>": 498,
    "<|image_end|>": 499,
}
_FIRST_BYTE_ID = 500
_WORDS = [
    "user", "Describe", " the", " image", " of", " and", " in", " for", " to", " is",
    " page", " document", " table", " figure", " total", " invoice", " report", " what",
    " which", " how", " many", " results", " chart", " revenue", " year",
]  # fmt: skip


def tile_label_id(row: int, col: int) -> int:
    return 397 + 10 * (row - 1) + (col - 1)


def _special_vocab() -> dict[str, int]:
    vocab = dict(SPECIAL_IDS)
    for r in range(1, 11):
        for c in range(1, 11):
            vocab[f"<|img_row_{r}_col_{c}|>"] = tile_label_id(r, c)
    used = set(vocab.values())
    for i in range(_FIRST_BYTE_ID):
        if i not in used:
            vocab[f"<|reserved_{i}|>"] = i
    return vocab


def build_synthetic_tokenizer() -> Tokenizer:
    """Byte-level BPE with LFM2-VL's special-token ids; deterministic, no files needed."""
    specials = _special_vocab()
    vocab = dict(specials)
    byte_map = pre_tokenizers.ByteLevel.alphabet()
    for i, ch in enumerate(sorted(byte_map)):
        vocab[ch] = _FIRST_BYTE_ID + i
    to_bytes = {b: ch for b, ch in zip(range(256), _bytes_to_unicode(), strict=True)}
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = [to_bytes[b] for b in word.encode("utf-8")]
        current = symbols[0]
        for sym in symbols[1:]:
            merged = current + sym
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((current, sym))
            current = merged
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A",
        pair="<|startoftext|> $A <|startoftext|> $B",
        special_tokens=[("<|startoftext|>", SPECIAL_IDS["<|startoftext|>"])],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sorted(specials, key=specials.get)])
    return tok


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character map, in byte order (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tokenizer_files(tokenizer: Tokenizer, out_dir: str | Path) -> None:
    """Write ``tokenizer.json`` plus the configs transformers' ``Lfm2VlProcessor`` needs."""
    out_dir = Path(out_dir)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "padding_side": "left",
        "model_max_length": 1000000000000000019884624838656,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        # transformers 4.57's Lfm2VlProcessor reads these attributes off the tokenizer.
        "extra_special_tokens": {
            "image_token": "<image>",
            "image_start_token": "<|image_start|>",
            "image_end_token": "<|image_end|>",
            "image_thumbnail": "<|img_thumbnail|>",
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special_map = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
