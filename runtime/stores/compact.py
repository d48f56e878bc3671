"""Compact page representations for large indexes: fewer or smaller vectors per page.

An index chooses one when it is created (``index add --compact KIND``) and records it:

=========== ===================================================== ======================= ===========
kind        vectors per page                                      stored as               needs
=========== ===================================================== ======================= ===========
``int8``    every row                                             int8 + a float32 scale  (nothing)
``binary``  every row, the sign of each dimension                 1 bit per dimension     (nothing)
``rowcol``  per tile grid, the mean of each row and each column   float16                 the layout
            of image tokens (Qdrant's ColPali recipe); the
            thumbnail is its own grid; text tokens dropped
``hier:F``  hierarchical (Ward) clusters, ``rows // F`` of them   float16                 scipy
            (colpali-engine's ``HierarchicalTokenPooler``)
``pool:K``  the same clustering, at most ``K`` clusters            float16                 scipy
=========== ===================================================== ======================= ===========

Every pooled vector is the L2-normalised mean of its rows, so MaxSim over compact vectors is a
cosine score like the full one. ``to_float`` turns any kind back into float rows (the compact
rerank of an index without originals scores those); ``to_codes`` into what a search holds in RAM
and the candidate kernel scores (``runtime.scoring.score_codes``): uint8 codes with one scale
per page. int8 and pooled fp16 vectors are quantized to those once, when a search first reads
them (int8 rows are rounded again, to their page's scale); binary vectors stay bits and are
expanded per block (codes would take 8x RAM).

The layout of a page is where its image tokens sit among its rows: one ``(start, grid_h,
grid_w)`` per tile (and thumbnail), in row order (``runtime.preprocess.layout``; the processor
records it on each ``ProcessedPage``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..preprocess.layout import Layout
from ..scoring import ROW_CODE_MAX, ROW_ZERO, quantize_rows

__all__ = ["KINDS", "Compaction", "hierarchical_pool", "rowcol_pool"]


KINDS = ("int8", "binary", "rowcol", "hier", "pool")


@dataclass(frozen=True)
class Compaction:
    """A compact representation: ``kind`` with its parameter (pool factor, or cluster cap)."""

    kind: str
    param: int = 0

    @classmethod
    def parse(cls, text: str) -> Compaction:
        kind, _, value = str(text).partition(":")
        if kind not in KINDS:
            raise InputError(f"unknown compact representation {text!r}; choose from int8, binary, rowcol, hier:F, "
                             "pool:K")  # fmt: skip
        needs = kind in ("hier", "pool")
        if needs != bool(value):
            raise InputError(f"{kind} {'needs a number (' + kind + ':N)' if needs else 'takes no number'}")
        param = int(value) if value.isdigit() else (0 if not needs else -1)
        if needs and param < 1:
            raise InputError(f"{kind}:N needs a positive whole N, got {value!r}")
        return cls(kind, param)

    def __str__(self) -> str:
        return f"{self.kind}:{self.param}" if self.kind in ("hier", "pool") else self.kind

    @property
    def is_fp16(self) -> bool:
        """Stored as fp16 rows (the pooled kinds), which other stores can take as they are."""
        return self.kind not in ("int8", "binary")

    @property
    def suffix(self) -> str:
        """The file suffix of this kind's segment files."""
        return {"int8": ".ci8", "binary": ".cb1"}.get(self.kind, ".c16")

    def row_bytes(self, dim: int) -> int:
        """Bytes one compact vector takes on disk and in RAM."""
        return {"int8": dim + 4, "binary": dim // 8}.get(self.kind, 2 * dim)

    def ram_row_bytes(self, dim: int) -> int:
        """Bytes one compact vector takes in a search's RAM: its ``to_codes`` form."""
        return (dim // 8 if self.kind == "binary" else dim) + 4

    def to_codes(self, data: np.ndarray, dim: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored compact vectors ([m, row_bytes] uint8) of pages back to back (``offsets``, from 0
        to m; rows between pages are their own documents) -> (rows, scale float32 [m]) for
        ``runtime.scoring.score_codes``: uint8 codes, or sign bits that ``code_decoder`` expands.
        Every row of a page carries the page's scale, so the kernel takes the max on integers."""
        if self.kind == "binary":
            return np.array(data), np.full(len(data), 1.0 / (ROW_CODE_MAX * np.sqrt(dim)), np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # a damaged int8 scale: NaN, found by the search
            rows = self.to_float(data, dim) if self.kind == "int8" else data.view(np.float16)
            return quantize_rows(rows, offsets)

    def code_decoder(self, dim: int):  # -> Callable[[np.ndarray], np.ndarray] | None
        """Turns a block of ``to_codes`` rows into uint8 codes: sign bits -> 128 +- 127; None for
        kinds held as codes."""
        if self.kind != "binary":
            return None
        table = _code_table()
        return lambda bits: np.take(table, bits).view(np.uint8).reshape(len(bits), dim)

    def encode(self, rows: np.ndarray, layout: Layout | None = None) -> np.ndarray:
        """One page's real rows [n, d] (float) -> its compact vectors as a [m, row_bytes] byte view."""
        rows = np.asarray(rows, dtype=np.float32)
        if self.kind == "int8":
            scale = np.maximum(np.abs(rows).max(axis=1), 1e-12) / 127.0
            q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
            return np.concatenate([q.view(np.uint8), scale.astype(np.float32)[:, None].view(np.uint8)], axis=1)
        if self.kind == "binary":
            if rows.shape[1] % 8:
                raise InputError("binary vectors need a dimension divisible by 8")
            return np.packbits(rows > 0, axis=1)
        if self.kind == "rowcol":
            if not layout:
                raise InputError("rowcol pooling needs the page's token layout (where its image tokens sit)")
            pooled = rowcol_pool(rows, layout)
        elif self.kind == "hier":
            pooled = hierarchical_pool(rows, pool_factor=self.param)
        else:
            pooled = hierarchical_pool(rows, max_clusters=self.param)
        return np.ascontiguousarray(pooled.astype(np.float16)).view(np.uint8)

    def to_float(self, data: np.ndarray, dim: int) -> np.ndarray:
        """Stored compact vectors ([m, row_bytes] uint8) -> float rows [m, dim] for MaxSim."""
        if self.kind == "int8":
            out = np.empty((len(data), dim), np.float32)  # one ufunc pass: int8 * scale straight into float32
            np.multiply(data[:, :dim].view(np.int8), data[:, dim : dim + 4].copy().view(np.float32), out=out)
            return out
        if self.kind == "binary":
            # Float queries against sign bits (Vespa's asymmetric recipe): +-1/sqrt(d) per dimension,
            # one table lookup per byte (fp16: the kernel's fp16 path, and the constant is shared).
            return np.take(_sign_table(dim), data).view(np.float16).reshape(len(data), dim)
        return data.view(np.float16)


@functools.cache
def _sign_table(dim: int) -> np.ndarray:
    # byte -> its 8 signs as one 16-byte scalar: a scalar gather is ~10x faster than a [256, 8] one
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)
    return np.ascontiguousarray(((2.0 * bits - 1.0) / np.sqrt(dim)).astype(np.float16)).view(np.complex128)[:, 0]


@functools.cache
def _code_table() -> np.ndarray:
    # byte -> its 8 sign codes (bit 1: +127, bit 0: -127, most significant bit first) as one uint64
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int16)
    codes = (ROW_ZERO + ROW_CODE_MAX * (2 * bits - 1)).astype(np.uint8)
    return np.ascontiguousarray(codes).view(np.uint64)[:, 0]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rowcol_pool(rows: np.ndarray, layout: Layout) -> np.ndarray:
    """Row means and column means of each unit's token grid, L2-normalised: sum of (h + w) per unit."""
    parts = []
    for start, h, w in layout:
        grid = np.asarray(rows[start : start + h * w], dtype=np.float32).reshape(h, w, -1)
        parts += [grid.mean(axis=1), grid.mean(axis=0)]
    return _normalise(np.concatenate(parts, axis=0))


def hierarchical_pool(rows: np.ndarray, pool_factor: int | None = None, max_clusters: int | None = None) -> np.ndarray:
    """colpali-engine's hierarchical token pooling, in numpy + scipy.

    Ward linkage over the rows of the cosine-distance matrix, cut into ``len(rows) // pool_factor``
    clusters (or at most ``max_clusters``); each cluster's mean, L2-normalised, in cluster order.
    Same arithmetic as ``HierarchicalTokenPooler._pool_single_embedding`` (float32 similarities)."""
    try:
        from scipy.cluster.hierarchy import fcluster, linkage
    except ImportError as exc:
        raise InputError("hierarchical pooling needs scipy (pip install 'collfm2-edge[pool]')") from exc
    emb = np.asarray(rows, dtype=np.float32)
    n = emb.shape[0]
    clusters = max(n // pool_factor, 1) if pool_factor else min(int(max_clusters or 1), n)
    if n < 2 or clusters >= n:
        return _normalise(emb.copy())
    distances = 1 - (emb @ emb.T)
    labels = fcluster(linkage(distances, metric="euclidean", method="ward"), t=clusters, criterion="maxclust") - 1
    pooled = [emb[labels == c].mean(axis=0) for c in range(clusters) if (labels == c).any()]
    return _normalise(np.stack(pooled))


def compact_pages(kind: Compaction, pages: Sequence[np.ndarray], layouts: Sequence[Layout | None]) -> list[np.ndarray]:
    """``kind.encode`` over pages (a convenience for benchmarks and imports)."""
    return [kind.encode(p, lay) for p, lay in zip(pages, layouts, strict=True)]
