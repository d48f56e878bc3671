"""The synthetic tokenizer's special ids, and the document/query templates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.tokenizer import SPECIAL_IDS, build_synthetic_tokenizer, tile_label_id
from runtime import ColLFM2Processor
from runtime.preprocess.image import plan_image
from runtime.preprocess.text import TextTokenizer

REAL_IDS = {
    "<|pad|>": 0,
    "<|startoftext|>": 1,
    "<|im_start|>": 6,
    "<|im_end|>": 7,
    "<image>": 396,
    "<|image_start|>": 498,
    "<|image_end|>": 499,
}


def test_special_ids_are_the_real_ones() -> None:
    tok = build_synthetic_tokenizer()
    for token, tid in REAL_IDS.items():
        assert tok.token_to_id(token) == tid, token
        assert SPECIAL_IDS[token] == tid
    assert tok.token_to_id("<|img_thumbnail|>") == 497
    assert tok.token_to_id("<|img_row_1_col_1|>") == 397 == tile_label_id(1, 1)
    assert tok.token_to_id("<|img_row_10_col_10|>") == 496 == tile_label_id(10, 10)
    assert tok.get_vocab_size() <= 1024  # the tiny preset's embedding table


def test_written_tokenizer_round_trips(tiny_ckpt: Path) -> None:
    tt = TextTokenizer.from_dir(tiny_ckpt)
    assert tt.ids["image"] == 396 and tt.ids["bos"] == 1 and tt.ids["pad"] == 0
    text = "Ünïcode, emoji 😀 and   spaces"
    assert tt.tokenizer.decode(tt.tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_document_template_512_page(tiny_ckpt: Path) -> None:
    tt = TextTokenizer.from_dir(tiny_ckpt)
    ids = tt.document_ids(plan_image(512, 512, ColLFM2Processor.from_pretrained(tiny_ckpt).config))
    assert len(ids) == 266  # 3 + 1 + 256 + 1 + 4 + 1 (docs/reference.md §4)
    assert ids[0] == 6 and ids[3] == 498 and ids[260] == 499 and ids[-1] == 7
    assert (ids[4:260] == 396).all()
    assert 1 not in ids[:1]  # no BOS on documents


def test_queries_have_bos_and_left_padding(tiny_ckpt: Path) -> None:
    proc = ColLFM2Processor.from_pretrained(tiny_ckpt)
    out = proc.process_queries(["a", "a much longer query"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    first_real = mask[0].argmax()
    assert ids[0, first_real] == 1 and (ids[0, :first_real] == 0).all() and (mask[0, :first_real] == 0).all()
    assert ids[1, 0] == 1 and mask[1].all()
