"""The validation grid, without torch: synthetic pages and queries of chosen lengths.

The export gate, ``--validate`` and the TensorRT engine check (which runs on a Jetson without
torch) all measure on these inputs: one 512x512 tile, one 26x36-patch tile, a tiled A4 page with
thumbnail, and a left-padded batch of queries of 1..63 text tokens.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from runtime import ColLFM2Processor

__all__ = ["QUERY_LENGTHS", "query_of_length", "synthetic_page", "validation_inputs"]

# Query lengths of the validation batch, in ids with BOS (so 1..63 text tokens; an empty query
# is refused by the processor).
QUERY_LENGTHS = (2, 3, 8, 21, 64)
_WORDS = [
    "quarterly",
    "revenue",
    "table",
    "invoice",
    "total",
    "amount",
    "due",
    "contents",
    "methods",
    "results",
    "discussion",
    "chart",
    "figure",
    "shipping",
    "address",
    "signature",
    "date",
    "page",
    "annex",
    "summary",
    "appendix",
    "balance",
    "sheet",
    "cash",
    "flow",
    "net",
    "income",
]


def synthetic_page(height: int, width: int, seed: int = 0) -> Image.Image:
    """A page-like RGB image: paper, dark text-like strokes, a coloured box, scanner noise."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (246, 244, 238))
    draw = ImageDraw.Draw(img)
    y = max(8, height // 20)
    while y < height - 12:
        x = max(6, width // 16)
        while x < width - 20:
            w = int(rng.integers(8, max(10, width // 8)))
            draw.rectangle([x, y, min(x + w, width - 6), y + max(3, height // 120)], fill=(30, 30, 40))
            x += w + int(rng.integers(4, 14))
        y += max(10, height // 30)
    draw.rectangle([width // 2, height // 3, width // 2 + width // 5, height // 3 + height // 8], fill=(200, 60, 40))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-5, 6, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def query_of_length(processor: ColLFM2Processor, n_tokens: int, seed: int) -> str:
    """A query whose ids (BOS included) number exactly ``n_tokens`` (>= 2), when the tokenizer
    allows it (else the nearest length above)."""
    rng = np.random.default_rng(seed)

    def count(t: str) -> int:
        return len(processor.tokenizer.query_ids(t, processor.max_query_tokens))

    text = str(rng.choice(_WORDS))
    while count(text) < n_tokens:
        text += " " + str(rng.choice(_WORDS))
    while len(text) > 1 and count(text[:-1].rstrip() or text) >= n_tokens and count(text) > n_tokens:
        text = text[:-1].rstrip()
    return text


def validation_inputs(processor: ColLFM2Processor) -> tuple[dict[str, Image.Image], list[str]]:
    pages = {
        "tile-512x512": synthetic_page(512, 512, seed=1),
        "tile-26x36": synthetic_page(26 * 16, 36 * 16, seed=2),
        "a4-150dpi": synthetic_page(1754, 1240, seed=3),
    }
    queries = [query_of_length(processor, n, seed=n) for n in QUERY_LENGTHS]
    return pages, queries
