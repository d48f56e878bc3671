"""Exact MaxSim in numpy (docs/reference.md §5).

``score(q, d) = sum over real query rows of max over real document rows of <q_i, d_j>``,
accumulated in float32. Inputs are lists of per-item ``[n, dim]`` arrays, or padded batches
``[B, L, dim]``; in a padded batch a row that is all zeros is padding (the model multiplies
padded rows by the attention mask, so they are exactly zero, and a real row has unit norm).

``mode="reference"`` reproduces upstream sauerkrautlm-colpali's ``score_multi_vector``, which zero-pads documents
to a common length, so whenever the documents scored together have different lengths each
per-row max is clamped at >= 0. Use it only to compare with upstream numbers.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .workers import shared_pool

__all__ = [
    "CodeLayout",
    "as_item_list",
    "quantize_rows",
    "run_codes",
    "run_max",
    "score",
    "score_codes",
    "score_packed",
]

# The MaxSim kernel as a 4-node ONNX graph (opset 18), one per document dtype:
#   best[n, q] = ReduceMax(Reshape(float32(docs) @ queries_t, shape), axis=1)
# ``shape`` is [n, L, q] for a run of n documents of L rows each, so the per-document max happens
# inside the call, on [rows, q] similarities that never leave the cache. Why ONNX Runtime and
# not numpy: numpy converts fp16 one element at a time (no vector path) and its fp32 GEMM is
# slower than MLAS on this skinny shape; a block of ~8k rows keeps the fp32 copy, the
# similarities and the max in L2/L3, so DRAM sees each fp16 row once. The bytes are rebuilt with
# onnx.helper in tests/test_scoring.py, which checks that they still match; they live here
# because the runtime does not depend on the onnx package.
_MAXSIM_ONNX = {
    np.dtype(np.float16): base64.b64decode(
        "CAkSDGNvbGxmbTItZWRnZTqnAgohCgRkb2NzEghkb2NzX2YzMiIEQ2FzdCoJCgJ0bxgBoAECCiMKCGRvY3NfZjMyCglxdWVyaWVz"
        "X3QSBHNpbXMiBk1hdE11bAofCgRzaW1zCgVzaGFwZRIHcGVyX2RvYyIHUmVzaGFwZQoxCgdwZXJfZG9jCgRheGlzEgRiZXN0IglS"
        "ZWR1Y2VNYXgqDwoIa2VlcGRpbXMYAKABAhIGbWF4c2ltKg0IARAHOgEBQgRheGlzWh0KBGRvY3MSFQoTCAoSDwoGEgRyb3dzCgUS"
        "A2RpbVofCglxdWVyaWVzX3QSEgoQCAESDAoFEgNkaW0KAxIBcVoTCgVzaGFwZRIKCggIBxIECgIIA2IdCgRiZXN0EhUKEwgBEg8K"
        "CBIGZG9jc19uCgMSAXFCBAoAEBI="
    ),
    np.dtype(np.float32): base64.b64decode(
        "CAkSDGNvbGxmbTItZWRnZTqAAgofCgRkb2NzCglxdWVyaWVzX3QSBHNpbXMiBk1hdE11bAofCgRzaW1zCgVzaGFwZRIHcGVyX2Rv"
        "YyIHUmVzaGFwZQoxCgdwZXJfZG9jCgRheGlzEgRiZXN0IglSZWR1Y2VNYXgqDwoIa2VlcGRpbXMYAKABAhIGbWF4c2ltKg0IARAH"
        "OgEBQgRheGlzWh0KBGRvY3MSFQoTCAESDwoGEgRyb3dzCgUSA2RpbVofCglxdWVyaWVzX3QSEgoQCAESDAoFEgNkaW0KAxIBcVoT"
        "CgVzaGFwZRIKCggIBxIECgIIA2IdCgRiZXN0EhUKEwgBEg8KCBIGZG9jc19uCgMSAXFCBAoAEBI="
    ),
}
# Rows per kernel call: whole documents, about this many rows (2 MB of fp16, 4 MB as fp32, about
# one L2 per core), so the fp32 copy and the similarities stay in cache; far larger blocks spill
# the copy to DRAM (benchmarks/bench_index.py).
BLOCK_ROWS = 1 << 13
_session_lock = threading.Lock()
_sessions: dict = {}


def _session(kind: np.dtype | str, threads: int = 0):  # -> onnxruntime.InferenceSession | None
    with _session_lock:
        key = (kind, threads)
        if key not in _sessions:
            try:
                from .sessions import ort_session

                # The arena stays on here: the kernel's blocks are small and the same size run after
                # run, so it reuses one block's buffers instead of allocating per call.
                graph = _CODES_ONNX[kind] if isinstance(kind, str) else _MAXSIM_ONNX[kind]
                _sessions[key] = ort_session(graph, threads, arena=True, quiet=True)
            except Exception:  # onnxruntime missing or broken: numpy still gives the same numbers
                _sessions[key] = None
        return _sessions[key]


def run_max(queries_t: np.ndarray, rows: np.ndarray, n_docs: int, threads: int = 0) -> np.ndarray:
    """``max over each document's rows of rows @ queries_t`` for ``n_docs`` documents of equal
    length stored back to back in ``rows`` [n_docs * L, dim]: [n_docs, Nq] float32.
    ``threads`` is ONNX Runtime's intra-op thread count (0: one per core)."""
    session = _session(rows.dtype, threads) if rows.dtype in _MAXSIM_ONNX else None
    shape = np.array([n_docs, len(rows) // n_docs, queries_t.shape[1]], dtype=np.int64)
    if session is not None:
        return session.run(None, {"docs": np.ascontiguousarray(rows), "queries_t": queries_t, "shape": shape})[0]
    return (np.asarray(rows, dtype=np.float32) @ queries_t).reshape(shape).max(axis=1)


ArrayOrList = np.ndarray | Sequence[np.ndarray]


def as_item_list(x: ArrayOrList, name: str) -> list[np.ndarray]:
    """Per-item 2-D float32 arrays with padding rows (all zero) of padded batches removed."""
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            items = [x]
        elif x.ndim == 3:
            items = [row[np.any(row != 0, axis=-1)] for row in x]
        else:
            raise InputError(f"{name}: expected [B, L, dim] or a list of [n, dim], got shape {x.shape}")
    else:
        items = [np.asarray(v) for v in x]
    out = []
    for i, v in enumerate(items):
        if v.ndim != 2:
            raise InputError(f"{name}[{i}]: expected a 2-D [n, dim] array, got shape {v.shape}")
        out.append(v)
    dims = {v.shape[1] for v in out}
    if len(dims) > 1:
        raise InputError(f"{name}: items have different embedding dims {sorted(dims)}")
    return out


def score(
    queries: ArrayOrList,
    documents: ArrayOrList,
    mode: str = "exact",
    block_rows: int = BLOCK_ROWS,
) -> np.ndarray:
    """MaxSim scores [n_queries, n_documents] float32.

    Documents are processed in blocks of about ``block_rows`` rows (whole documents), so memory
    stays bounded and each block stays in cache; fp16 inputs are promoted to float32 inside the
    kernel, block by block.
    """
    if mode not in ("exact", "reference"):
        raise InputError(f"mode must be 'exact' or 'reference', got {mode!r}")
    qs = as_item_list(queries, "queries")
    ds = as_item_list(documents, "documents")
    out = np.zeros((len(qs), len(ds)), dtype=np.float32)
    if not qs or not ds:
        return out
    if qs[0].shape[1] != ds[0].shape[1]:
        raise InputError(f"query dim {qs[0].shape[1]} != document dim {ds[0].shape[1]}")
    clamp = mode == "reference" and len({len(d) for d in ds}) > 1
    spans, start = [], 0
    while start < len(ds):
        stop, rows = start, 0
        while stop < len(ds) and (rows == 0 or rows + len(ds[stop]) <= block_rows):
            rows += len(ds[stop])
            stop += 1
        spans.append((start, stop))
        start = stop
    pool = shared_pool() if len(spans) > 1 else None

    def one(span: tuple[int, int], threads: int) -> np.ndarray:
        block = ds[span[0] : span[1]]
        # fp16 documents stay fp16 until the kernel, which converts them in cache.
        dtype = np.float16 if all(d.dtype == np.float16 for d in block) else np.float32
        packed = np.concatenate([d.astype(dtype, copy=False) for d in block], axis=0)  # [Nd, dim]
        offsets = np.cumsum([0] + [len(d) for d in block])
        return score_packed(qs, packed, offsets, clamp=clamp, block_rows=block_rows, threads=threads)

    # Separate arrays must be gathered into one block per kernel call, and that copy is a
    # single-threaded read of every row from DRAM: blocks go to one worker per core, each
    # packing and scoring its own block on one thread (1.5x faster than packing in turn).
    results = pool.map(lambda span: one(span, 1), spans) if pool else (one(span, 0) for span in spans)
    for (a, b), res in zip(spans, results, strict=True):
        out[:, a:b] = res
    return out


def score_packed(
    queries: ArrayOrList,
    rows: np.ndarray,
    offsets: np.ndarray,
    clamp: bool = False,
    block_rows: int = BLOCK_ROWS,
    threads: int = 0,
    decode: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """MaxSim of queries against documents stored back to back: document ``j`` is
    ``rows[offsets[j]:offsets[j+1]]``. ``rows`` may be an fp16 memory map (an index segment); it
    is read in runs of equal-length documents of about ``block_rows`` rows, promoted to float32
    inside the kernel. ``decode`` turns a block of stored rows into float rows (compact int8 or
    binary vectors): decoding block by block keeps the float copy in cache-sized pieces instead
    of the whole segment.

    Returns [n_queries, n_documents] float32. An empty query or document scores 0.
    """
    qs = as_item_list(queries, "queries")
    offsets = np.asarray(offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    out = np.zeros((len(qs), n_docs), dtype=np.float32)
    live = [i for i, q in enumerate(qs) if len(q)]
    if not live or n_docs <= 0:
        return out
    q_t = np.ascontiguousarray(np.concatenate([qs[i] for i in live], axis=0).astype(np.float32, copy=False).T)
    q_starts = np.cumsum([0] + [len(qs[i]) for i in live])[:-1]
    lengths = np.diff(offsets)
    best = np.zeros((n_docs, q_t.shape[1]), dtype=np.float32)  # empty documents keep 0

    def block(lo: int, hi: int) -> np.ndarray:
        return rows[lo:hi] if decode is None else decode(rows[lo:hi])

    def mixed(first: int, last: int) -> None:
        # Documents of different lengths: one call for the [rows, Nq] similarities, then a
        # per-document max in numpy (reduceat cannot express an empty document: skip those).
        lo, hi = int(offsets[first]), int(offsets[last])
        keep = np.flatnonzero(lengths[first:last] > 0)
        if len(keep):
            sims = run_max(q_t, block(lo, hi), hi - lo, threads)  # one row per "document"
            best[first + keep] = np.maximum.reduceat(sims, offsets[first:last][keep] - lo, axis=0)

    # Runs of consecutive documents with the same row count (index pages of one source size
    # share a count) are reduced inside the kernel, a call per ~block_rows rows. Short runs are
    # pooled into mixed blocks, so an index of all-different lengths still makes one call per
    # block rather than one per page (2.3x slower over 10k pages of 200-330 rows).
    cuts = np.flatnonzero(np.diff(lengths)) + 1
    pending = None  # first document of the mixed block being gathered
    for first, last in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [n_docs]]), strict=True):
        first, last, length = int(first), int(last), int(lengths[first])
        if length and (last - first) * length >= block_rows // 2:
            if pending is not None:
                mixed(pending, first)
                pending = None
            step = max(1, block_rows // length)
            for a in range(first, last, step):
                b = min(a + step, last)
                best[a:b] = run_max(q_t, block(int(offsets[a]), int(offsets[b])), b - a, threads)
            continue
        pending = first if pending is None else pending
        if offsets[last] - offsets[pending] >= block_rows:
            mixed(pending, last)
            pending = None
    if pending is not None:
        mixed(pending, n_docs)
    if clamp:
        np.maximum(best, 0.0, out=best)
    best[lengths == 0] = 0.0
    out[live] = np.add.reduceat(best, q_starts, axis=1).T
    return out


# -- the candidate stage's kernel: quantized rows, exact integer dot products ---------------------
#
# Two-stage search scores every page's compact vectors per query, so this loop is the search's
# cost at scale. ONNX Runtime's fp16 -> fp32 Cast runs on one thread at ~4 G elements/s, which
# alone took 40 of a 100k-page query's ~70 ms; an integer GEMM reads half the bytes and converts
# nothing. Rows are uint8 codes (row ~= (codes - 128) * scale) with one scale per document, so the
# per-document max can be taken on the integers; queries are int8 with a per-token scale, and
# ``MatMulInteger`` gives exact int32 dot products on every CPU class: query codes stay within
# +-64, so a uint8 x int8 pair sum never exceeds int16 (AVX2's vpmaddubsw saturates there; VNNI,
# AMX and the Arm dot products accumulate in int32 anyway). The graphs:
#   run:    best[d, q] = ReduceMax(Reshape(MatMulInteger(codes, queries_t, 128), [d, L, q]), axis=1)
#   pieces: best[p, q] = ReduceMax(Gather(MatMulInteger(codes, queries_t, 128), pieces), axis=1)
# ``run`` scores a block whose documents all have L rows in place; ``pieces`` [p, piece] lists
# each document's rows in pieces of at most ``PIECE_ROWS`` (a short piece repeats its document's
# last row, which leaves the max unchanged), so documents of any mix of lengths are scored in one
# call per block; numpy takes the max over a long document's pieces, then scales the [docs, q]
# integers. A per-row scale would need the int32 similarities cast and scaled before the max: two
# more passes over [rows, q], which made the kernel ~1.8x slower at 100k pages (pool:12, 20
# tokens, AMD EPYC 2 cores). The bytes are rebuilt with onnx.helper in tests/test_scoring.py.
_CODES_ONNX = {
    "run": base64.b64decode(
        "CAkSDGNvbGxmbTItZWRnZTqnAgotCgVjb2RlcwoJcXVlcmllc190CgR6ZXJvEgRkb3RzIg1NYXRNdWxJbnRlZ2VyCh8KBGRvdHMK"
        "BXNoYXBlEgdncm91cGVkIgdSZXNoYXBlCjEKB2dyb3VwZWQKBGF4aXMSBGJlc3QiCVJlZHVjZU1heCoPCghrZWVwZGltcxgAoAEC"
        "EhBtYXhzaW1fY29kZXNfcnVuKgwQAioCgAFCBHplcm8qDQgBEAc6AQFCBGF4aXNaHgoFY29kZXMSFQoTCAISDwoGEgRyb3dzCgUS"
        "A2RpbVofCglxdWVyaWVzX3QSEgoQCAMSDAoFEgNkaW0KAxIBcVoTCgVzaGFwZRIKCggIBxIECgIIA2IdCgRiZXN0EhUKEwgGEg8K"
        "CBIGZ3JvdXBzCgMSAXFCBAoAEBI="
    ),
    "pieces": base64.b64decode(
        "CAkSDGNvbGxmbTItZWRnZTrHAgotCgVjb2RlcwoJcXVlcmllc190CgR6ZXJvEgRkb3RzIg1NYXRNdWxJbnRlZ2VyCiwKBGRvdHMK"
        "BnBpZWNlcxIHZ3JvdXBlZCIGR2F0aGVyKgsKBGF4aXMYAKABAgoxCgdncm91cGVkCgRheGlzEgRiZXN0IglSZWR1Y2VNYXgqDwoI"
        "a2VlcGRpbXMYAKABAhITbWF4c2ltX2NvZGVzX3BpZWNlcyoMEAIqAoABQgR6ZXJvKg0IARAHOgEBQgRheGlzWh4KBWNvZGVzEhUK"
        "EwgCEg8KBhIEcm93cwoFEgNkaW1aHwoJcXVlcmllc190EhIKEAgDEgwKBRIDZGltCgMSAXFaIwoGcGllY2VzEhkKFwgGEhMKCBIG"
        "Z3JvdXBzCgcSBXBpZWNlYh0KBGJlc3QSFQoTCAYSDwoIEgZncm91cHMKAxIBcUIECgAQEg=="
    ),
}
ROW_ZERO = 128  # uint8 code of 0.0
ROW_CODE_MAX = 127
QUERY_CODE_MAX = 64
PIECE_ROWS = 32
# Rows per kernel call (whole documents): a search's packs (~64k rows) are one call each; the
# int32 similarities of 128k rows at 32 query tokens are 16 MB. Blocks of 32k / 64k / 128k rows:
# 147 / 120 / 110 ms over 100k pages (synthetic, 2 busy cores, per-row scale: ratios only).
CODE_BLOCK_ROWS = 1 << 17


def quantize_rows(rows: np.ndarray, offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Float rows [n, dim] -> (codes uint8 [n, dim], scale float32 [n]) with
    ``row ~= (codes - 128) * scale``. The rows of one document (``offsets``, covering every row
    back to back; default: each row alone) share one scale, at which the document's largest
    magnitude maps to 127. A document with a non-finite value gets scale NaN and codes 128."""
    rows = np.asarray(rows, dtype=np.float32)
    peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows), np.float32)
    if offsets is not None:
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(rows) or (lengths < 0).any():
            raise ValueError(f"offsets must run from 0 to {len(rows)} without going back")
        live = lengths > 0
        doc_peak = np.maximum.reduceat(peak, offsets[:-1][live]) if live.any() else peak
        peak = np.repeat(doc_peak, lengths[live])  # maximum propagates NaN: one bad row, the whole document
    finite = np.isfinite(peak)
    scale = np.where(finite, peak / np.float32(ROW_CODE_MAX), np.float32(np.nan)).astype(np.float32)
    div = np.where(finite & (peak > 0), scale, np.float32(1))[:, None]
    codes = np.rint(np.where(finite[:, None], rows, np.float32(0)) / div)
    np.clip(codes, -ROW_CODE_MAX, ROW_CODE_MAX, out=codes)
    return (codes + ROW_ZERO).astype(np.uint8), scale


def _quantize_queries(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query rows [Nq, dim] -> (codes int8 [dim, Nq] within +-64, per-token scale float32 [Nq]); a
    non-finite token gets scale NaN."""
    peak = np.abs(q).max(axis=1)
    finite = np.isfinite(peak)
    scale = np.where(finite, peak / np.float32(QUERY_CODE_MAX), np.float32(np.nan)).astype(np.float32)
    div = np.where(finite & (peak > 0), scale, np.float32(1))[:, None]
    codes = np.clip(np.rint(np.where(finite[:, None], q, np.float32(0)) / div), -QUERY_CODE_MAX, QUERY_CODE_MAX)
    return np.ascontiguousarray(codes.astype(np.int8).T), scale


@dataclass(frozen=True)
class _CodeBlock:
    lo: int  # rows lo:hi of the codes
    hi: int
    at: slice | np.ndarray  # the block's documents with rows (empty ones score 0): a slice when consecutive
    run: int  # rows of every document when they are all equal (the ``run`` graph), else 0
    pieces: np.ndarray | None  # [p, piece] int32 row numbers relative to lo (the ``pieces`` graph)
    firsts: np.ndarray | None  # each document's first piece; None when every document is one piece


@dataclass(frozen=True)
class CodeLayout:
    """How ``score_codes`` reads documents stored back to back (document ``j`` is rows
    ``offsets[j]:offsets[j+1]``): built once per set of offsets, since it costs about as much as
    a search's kernel calls."""

    offsets: np.ndarray
    blocks: tuple[_CodeBlock, ...]

    @classmethod
    def build(cls, offsets: np.ndarray, block_rows: int = CODE_BLOCK_ROWS) -> CodeLayout:
        offsets = np.asarray(offsets, dtype=np.int64)
        n_docs = len(offsets) - 1
        blocks, a = [], 0
        while a < n_docs:
            b = max(a + 1, int(np.searchsorted(offsets, offsets[a] + block_rows, side="right")) - 1)
            b = min(b, n_docs)
            lo, hi = int(offsets[a]), int(offsets[b])
            lengths = np.diff(offsets[a : b + 1])
            docs = np.flatnonzero(lengths > 0)
            if len(docs) and (lengths[docs] == lengths[docs[0]]).all():  # empty ones hold no rows
                blocks.append(_CodeBlock(lo, hi, _where(a + docs), int(lengths[docs[0]]), None, None))
            elif len(docs):
                lengths = lengths[docs]
                piece = int(min(lengths.max(), PIECE_ROWS))
                n_pieces = -(-lengths // piece)
                firsts = np.cumsum(n_pieces) - n_pieces
                doc_of = np.repeat(np.arange(len(docs)), n_pieces)
                start = offsets[a + docs][doc_of] + (np.arange(len(doc_of)) - firsts[doc_of]) * piece
                last = offsets[a + docs + 1][doc_of] - 1
                rows = np.minimum(start[:, None] + np.arange(piece), last[:, None]) - lo
                blocks.append(_CodeBlock(lo, hi, _where(a + docs), 0, rows.astype(np.int32),
                                         firsts if len(doc_of) > len(docs) else None))  # fmt: skip
            a = b
        return cls(offsets, tuple(blocks))

    def doc_scale(self, scale: np.ndarray) -> np.ndarray:
        """Per-row scales [rows] -> each document's [n_docs] float32, what ``score_codes`` takes:
        the largest of its rows' (NaN if any is NaN; 0 for an empty document). Rows quantized with
        these offsets all carry their document's scale."""
        scale = np.asarray(scale, dtype=np.float32)
        lengths = np.diff(self.offsets)
        out = np.zeros(len(lengths), np.float32)
        live = lengths > 0
        if live.any():
            out[live] = np.maximum.reduceat(scale, self.offsets[:-1][live])
        return out


def run_codes(codes: np.ndarray, queries_t: np.ndarray, block: _CodeBlock, threads: int = 0) -> np.ndarray:
    """One call of the candidate kernel on ``block``'s rows of ``codes``: ``max over each
    document's (``run``) or piece's rows of (codes - 128) @ queries_t``, [docs or pieces, Nq]
    int32 (codes uint8 [n, dim], queries_t int8 [dim, Nq])."""
    kind = "run" if block.run else "pieces"
    session = _session(kind, threads)
    if block.run:
        group = np.array([len(codes) // block.run, block.run, queries_t.shape[1]], dtype=np.int64)
    else:
        group = block.pieces
    if session is not None:
        feeds = {
            "codes": np.ascontiguousarray(codes),
            "queries_t": queries_t,
            ("shape" if block.run else "pieces"): group,
        }
        return session.run(None, feeds)[0]
    # the same integers as the graph
    dots = (codes.astype(np.int32) - ROW_ZERO) @ queries_t.astype(np.int32)
    return (dots.reshape(group) if block.run else dots[group]).max(axis=1)


def score_codes(
    queries: ArrayOrList,
    codes: np.ndarray,
    scale: np.ndarray,
    layout: CodeLayout,
    decode: Callable[[np.ndarray], np.ndarray] | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Approximate MaxSim of queries against documents of quantized rows, laid out as ``layout``
    says: [n_queries, n_documents] float32. ``scale`` [n_documents] is each document's
    (``layout.doc_scale`` of ``quantize_rows(rows, layout.offsets)``): all its rows are codes at
    that one scale. ``decode`` turns a block of stored rows into codes (sign bits, which would take
    8x the RAM as codes). The integer products and maxima are exact, so every CPU gives the same
    numbers, bit for bit, as the numpy fallback. An empty query or document scores 0; a document
    with a NaN scale scores NaN."""
    qs = as_item_list(queries, "queries")
    n_docs = len(layout.offsets) - 1
    out = np.zeros((len(qs), n_docs), dtype=np.float32)
    live = [i for i, q in enumerate(qs) if len(q)]
    if not live or n_docs <= 0:
        return out
    q_codes, q_scale = _quantize_queries(np.concatenate([qs[i] for i in live]).astype(np.float32, copy=False))
    q_starts = np.cumsum([0] + [len(qs[i]) for i in live])[:-1]
    scale = np.asarray(scale, dtype=np.float32)
    if scale.shape != (n_docs,):
        raise ValueError(f"scale must be one per document ({n_docs}), got shape {scale.shape}")
    # [tokens, docs]: the sums over a query's tokens add whole rows, in token order, the same
    # elementwise additions on every CPU (and ~5x faster than reducing along each document's row).
    best = np.zeros((q_codes.shape[1], n_docs), dtype=np.float32)
    for blk in layout.blocks:
        c = codes[blk.lo : blk.hi] if decode is None else decode(codes[blk.lo : blk.hi])
        res = run_codes(c, q_codes, blk, threads)
        if blk.firsts is not None:
            res = np.maximum.reduceat(res, blk.firsts, axis=0)
        # |dot| <= 127 * 64 * dim < 2**24: float32 holds it exactly, so this is one rounding
        if isinstance(blk.at, slice):
            np.multiply(res.T, scale[blk.at], out=best[:, blk.at], dtype=np.float32)
        else:  # a gather of columns is a copy: assign it
            best[:, blk.at] = np.multiply(res.T, scale[blk.at], dtype=np.float32)
    best *= q_scale[:, None]
    out[live] = np.add.reduceat(best, q_starts, axis=0)
    return out


def _where(docs: np.ndarray) -> slice | np.ndarray:
    return slice(int(docs[0]), int(docs[-1]) + 1) if docs[-1] - docs[0] + 1 == len(docs) else docs
