"""Similarity maps: where on a page each query token finds its match.

colpali-engine's interpretability recipe (one map per query token over the image-token grid,
min-max normalised, drawn over the page), extended to LFM2-VL's tiling: a large page is split
into ``rows x cols`` tiles of 16x16 tokens each plus a thumbnail of the whole page, so each
tile's grid is put back at its place on the page and the thumbnail's map is kept apart (it sees
the whole page at a coarser scale). Every unit's grid covers its whole image (tiles are cut
from the page resized to ``rows*512 x cols*512``, the single unit and the thumbnail are the page
resized), so a map stretched over the page lines up with it.

``similarity_maps`` is pure numpy over embeddings and a page layout; ``explain`` runs the model
(or takes a page's stored rows); ``render`` draws with Pillow (no matplotlib in the runtime).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .preprocess.layout import Layout

__all__ = ["Explanation", "explain", "normalise", "render", "similarity_maps", "write_maps"]

# matplotlib's viridis at 0, 1/4, 1/2, 3/4, 1 (interpolated linearly: close enough to read a map).
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


@dataclass
class Explanation:
    """The similarity of each query token to each image token of one page.

    ``page[t]`` is token ``t``'s map over the page's token grid: ``rows*h x cols*w`` for a tiled
    page (tile ``(r, c)`` at rows ``r*h..`` and columns ``c*w..``), the single unit's grid
    otherwise. ``thumbnail[t]`` is its map over the thumbnail's grid (tiled pages only).
    Values are raw cosine similarities; ``normalise`` makes them 0..1 for display."""

    query: str
    tokens: list[str]  # one label per query token
    page: np.ndarray  # [n_tokens, H, W] float32
    thumbnail: np.ndarray | None  # [n_tokens, h, w] float32
    tiles: tuple[int, int]  # (rows, cols); (1, 1) when the page is one unit
    image_size: tuple[int, int]  # (height, width) of the decoded page
    score: float  # MaxSim of the query against all of the page's rows (text rows too)

    def combined(self, how: str = "max") -> tuple[np.ndarray, np.ndarray | None]:
        """All tokens in one map (``sum`` or ``max`` over tokens): (page map, thumbnail map)."""
        if how not in ("sum", "max"):
            raise InputError(f"combine with 'sum' or 'max', not {how!r}")
        reduce = np.sum if how == "sum" else np.max
        thumb = None if self.thumbnail is None else reduce(self.thumbnail, axis=0)
        return reduce(self.page, axis=0), thumb


def similarity_maps(
    query: np.ndarray, rows: np.ndarray, layout: Layout, tiles: tuple[int, int], thumbnail: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-token maps of ``query`` [n_q, d] over a page's ``rows`` [n, d] laid out as ``layout``.

    ``layout`` is ``ProcessedPage.layout``: one (first row, h, w) per unit in row order, the tiles
    row-major and then the thumbnail. Returns (page [n_q, rows*h, cols*w], thumbnail or None)."""
    q = np.asarray(query, np.float32)
    r = np.asarray(rows, np.float32)
    n_tiles = tiles[0] * tiles[1]
    expected = n_tiles + (1 if thumbnail else 0) if n_tiles > 1 else 1
    if len(layout) != expected:
        raise InputError(f"the layout has {len(layout)} unit(s); {tiles[0]}x{tiles[1]} tiles"
                         f"{' + thumbnail' if thumbnail else ''} need {expected}")  # fmt: skip

    def grid(unit: tuple[int, int, int]) -> np.ndarray:
        start, h, w = unit
        if start + h * w > len(r):
            raise InputError(f"the page has {len(r)} rows; its layout needs {start + h * w}")
        return (r[start : start + h * w] @ q.T).T.reshape(len(q), h, w)

    if n_tiles == 1:
        return grid(layout[0]), None
    shapes = {(h, w) for _, h, w in layout[:n_tiles]}
    if len(shapes) != 1:
        raise InputError(f"tiles of different token grids {sorted(shapes)}")
    (h, w), (rows_, cols) = shapes.pop(), tiles
    page = np.empty((len(q), rows_ * h, cols * w), np.float32)
    for i, unit in enumerate(layout[:n_tiles]):
        tr, tc = divmod(i, cols)  # tiles are row-major, as make_units cuts them
        page[:, tr * h : (tr + 1) * h, tc * w : (tc + 1) * w] = grid(unit)
    return page, (grid(layout[n_tiles]) if thumbnail else None)


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max to 0..1 over the whole map (a flat map is all 0), as colpali-engine normalises."""
    m = np.asarray(m, np.float32)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi - lo <= 1e-12 else (m - lo) / (hi - lo)


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Readable labels of token ids (byte-level markers shown as spaces)."""
    out = []
    for i in ids:
        tok = tokenizer.id_to_token(int(i)) or f"<{int(i)}>"
        out.append(tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n"))
    return out


def explain(model: Any, query: str, image: Any, rows: np.ndarray | None = None, name: str | None = None) -> Explanation:
    """The maps of ``query`` on ``image`` (a path, bytes, PIL image or HxWx3 array).

    ``rows`` are the page's stored embeddings (e.g. from an index); without them the page is
    encoded. Stored rows must match this page's preprocessing (same row count)."""
    from .preprocess.processor import collate_pages

    processor = model.processor
    page = processor.process_image(image, name)
    layout = page.layout
    if rows is None:
        rows = model.encode_rows(collate_pages([page]))[0]
    elif len(rows) != len(page.input_ids):
        raise InputError(f"{name or 'page'}: the stored vectors ({len(rows)} rows) do not match this page as it is "
                         f"preprocessed now ({len(page.input_ids)}); was the file changed or rendered at another "
                         "--dpi?")  # fmt: skip
    ids = processor.tokenizer.query_ids(query, processor.max_query_tokens)
    (q,) = model.embed_queries([query])
    plan = page.plan
    tiles = (plan.grid_rows, plan.grid_cols) if plan.tiled else (1, 1)
    page_map, thumb = similarity_maps(q, rows, layout, tiles, plan.tiled and plan.thumbnail)
    score = float(np.max(np.asarray(rows, np.float32) @ np.asarray(q, np.float32).T, axis=0).sum())
    return Explanation(query, token_labels(processor.tokenizer.tokenizer, ids), page_map, thumb, tiles,
                       (plan.height, plan.width), score)  # fmt: skip


def _colour(m01: np.ndarray) -> np.ndarray:
    x = np.clip(m01, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.minimum(x.astype(np.int64), len(_VIRIDIS) - 2)
    t = (x - lo)[..., None]
    return ((1 - t) * _VIRIDIS[lo] + t * _VIRIDIS[lo + 1]).astype(np.uint8)


def _overlay(page: Image.Image, m01: np.ndarray, alpha: float) -> Image.Image:
    # NEAREST: one block per image token, so a map shows the cells the model saw.
    heat = Image.fromarray(_colour(m01)).resize(page.size, Image.Resampling.NEAREST)
    return Image.blend(page, heat, alpha)


def render(expl: Explanation, image: Image.Image, which: int | str = "max", alpha: float = 0.55,
           title: str | None = None) -> Image.Image:  # fmt: skip
    """The page with one map over it: query token ``which`` (an index) or ``sum``/``max`` of all.
    A tiled page's thumbnail map is drawn beside it, at thumbnail scale; tile borders are marked."""
    if isinstance(which, str):
        page_m, thumb_m = expl.combined(which)
        label = f"{which} over all tokens"
    else:
        if not 0 <= which < len(expl.tokens):
            raise InputError(f"token {which} out of range (the query has {len(expl.tokens)} tokens)")
        page_m, thumb_m = expl.page[which], None if expl.thumbnail is None else expl.thumbnail[which]
        label = f"token {which}: {expl.tokens[which]!r}"
    base = image.convert("RGB")
    if base.size != (expl.image_size[1], expl.image_size[0]):
        raise InputError(f"the image is {base.size[0]}x{base.size[1]}, the maps were made for "
                         f"{expl.image_size[1]}x{expl.image_size[0]}")  # fmt: skip
    panel = _overlay(base, normalise(page_m), alpha)
    draw = ImageDraw.Draw(panel)
    rows, cols = expl.tiles
    for r in range(1, rows):
        draw.line([(0, r * panel.height / rows), (panel.width, r * panel.height / rows)], fill=(255, 255, 255), width=1)
    for c in range(1, cols):
        draw.line([(c * panel.width / cols, 0), (c * panel.width / cols, panel.height)], fill=(255, 255, 255), width=1)
    parts = [panel]
    if thumb_m is not None:
        side = max(1, panel.height // 3)
        small = base.resize((max(1, round(side * base.width / base.height)), side), Image.Resampling.BILINEAR)
        parts.append(_overlay(small, normalise(thumb_m), alpha))
    font = _font(max(12, panel.height // 60))
    bar = int(font.size * 1.6) if hasattr(font, "size") else 22
    out = Image.new("RGB", (sum(p.width for p in parts) + 8 * (len(parts) - 1), panel.height + bar), "white")
    x = 0
    for p in parts:
        out.paste(p, (x, bar))
        x += p.width + 8
    text = title or f"{expl.query!r}: {label}  (MaxSim {expl.score:.3f})"
    text += "  | thumbnail at right" if thumb_m is not None else ""
    ImageDraw.Draw(out).text((4, bar // 5), text, fill="black", font=font)
    return out


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _safe(label: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", label.strip()).strip("_")[:24] or "tok"


def write_maps(expl: Explanation, image: Image.Image, out_dir: str | Path, stem: str,
               tokens: bool = True) -> list[Path]:  # fmt: skip
    """``{stem}.max.png``, ``{stem}.sum.png``, one ``{stem}.tNN-LABEL.png`` per query token
    (``tokens``) and ``{stem}.npz`` (the raw maps and labels) under ``out_dir``."""
    out = Path(out_dir)
    try:
        return _write_maps(expl, image, out, stem, tokens)
    except OSError as exc:  # a full disk, a file where the folder should be, no permission
        raise InputError(f"{out}: cannot write the maps there ({exc.strerror or exc})") from None


def _write_maps(expl: Explanation, image: Image.Image, out: Path, stem: str, tokens: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for how in ("max", "sum"):
        path = out / f"{stem}.{how}.png"
        render(expl, image, how).save(path)
        written.append(path)
    if tokens:
        for t, label in enumerate(expl.tokens):
            path = out / f"{stem}.t{t:02d}-{_safe(label)}.png"
            render(expl, image, t).save(path)
            written.append(path)
    arrays: dict[str, Any] = {"page": expl.page, "tokens": np.array(expl.tokens), "tiles": np.array(expl.tiles),
                              "image_size": np.array(expl.image_size), "score": np.float32(expl.score)}  # fmt: skip
    if expl.thumbnail is not None:
        arrays["thumbnail"] = expl.thumbnail
    np.savez(out / f"{stem}.npz", **arrays)
    written.append(out / f"{stem}.npz")
    return written
