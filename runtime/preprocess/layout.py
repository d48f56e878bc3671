"""Where a page's image tokens sit among its rows: one ``(first row, grid h, grid w)`` per tile
(and thumbnail), in row order. The processor computes it as it builds the ids (``ProcessedPage.layout``);
row/column pooling (``runtime.stores.compact``) and similarity maps (``runtime.explain``) read it."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["Layout", "page_layout"]

Layout = tuple[tuple[int, int, int], ...]  # per unit: (first row, token grid height, token grid width)


def page_layout(input_ids: np.ndarray, spatial_shapes: np.ndarray, image_token_id: int, factor: int = 2) -> Layout:
    """Where each unit's image tokens start among a page's rows, and its token grid (h, w)."""
    ids = np.asarray(input_ids)
    where = np.flatnonzero(ids == image_token_id)
    out, cursor = [], 0
    for ph, pw in np.asarray(spatial_shapes):
        h, w = int(ph) // factor, int(pw) // factor
        if cursor + h * w > len(where):
            raise InputError("the page's <image> tokens do not cover its tiles")
        start = int(where[cursor])
        if int(where[cursor + h * w - 1]) != start + h * w - 1:
            raise InputError("a tile's image tokens are not contiguous")
        out.append((start, h, w))
        cursor += h * w
    return tuple(out)
