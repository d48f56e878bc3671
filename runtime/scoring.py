"""Exact MaxSim in numpy (reference doc section 5).

``score(q, d) = sum over real query rows of max over real document rows of <q_i, d_j>``,
accumulated in float32. Inputs are lists of per-item ``[n, dim]`` arrays, or padded batches
``[B, L, dim]``; in a padded batch a row that is all zeros is padding (the model multiplies
padded rows by the attention mask, so they are exactly zero, and a real row has unit norm).

``mode="reference"`` reproduces the seed's ``score_multi_vector``, which zero-pads documents
to a common length, so whenever the documents scored together have different lengths each
per-row max is clamped at >= 0. Use it only to compare with upstream numbers.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence

import numpy as np

__all__ = ["as_item_list", "score", "score_packed", "similarities"]

# A 2-node ONNX graph, ``sims = queries @ float32(docs).T`` (Cast + Gemm(transB=1), opset 18),
# for fp16 document rows. numpy converts fp16 one element at a time (~2.5 ns each here), which
# made an index scan 5x slower than its GEMM; ONNX Runtime's Cast uses F16C and threads. The
# bytes are built with onnx.helper in tests/test_scoring.py, which checks they still match; they
# live here because the runtime does not depend on the onnx package.
_MAXSIM_F16_ONNX = base64.b64decode(
    "CAkSDGNvbGxmbTItZWRnZTq6AQohCgRkb2NzEghkb2NzX2YzMiIEQ2FzdCoJCgJ0bxgBoAECCi4KB3F1ZXJpZXMKCGRvY3NfZjMy"
    "EgRzaW1zIgRHZW1tKg0KBnRyYW5zQhgBoAECEgptYXhzaW1fZjE2Wh0KB3F1ZXJpZXMSEgoQCAESDAoDEgFxCgUSA2RpbVodCgRk"
    "b2NzEhUKEwgKEg8KBhIEcm93cwoFEgNkaW1iGwoEc2ltcxITChEIARINCgMSAXEKBhIEcm93c0IECgAQEg=="
)
_session_lock = threading.Lock()
_session: list = []


def _f16_session():  # -> onnxruntime.InferenceSession | None
    with _session_lock:
        if not _session:
            try:
                import onnxruntime as ort

                _session.append(ort.InferenceSession(_MAXSIM_F16_ONNX, providers=["CPUExecutionProvider"]))
            except Exception:  # onnxruntime missing or broken: numpy still gives the same numbers
                _session.append(None)
        return _session[0]


def similarities(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``queries [Nq, dim] @ rows [R, dim].T`` in float32; fp16 rows go through ONNX Runtime."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if rows.dtype == np.float16:
        session = _f16_session()
        if session is not None:
            return session.run(None, {"queries": q, "docs": np.ascontiguousarray(rows)})[0]
    return q @ np.asarray(rows, dtype=np.float32).T


ArrayOrList = np.ndarray | Sequence[np.ndarray]


def as_item_list(x: ArrayOrList, name: str) -> list[np.ndarray]:
    """Per-item 2-D float32 arrays with padding rows (all zero) of padded batches removed."""
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            items = [x]
        elif x.ndim == 3:
            items = [row[np.any(row != 0, axis=-1)] for row in x]
        else:
            raise ValueError(f"{name}: expected [B, L, dim] or a list of [n, dim], got shape {x.shape}")
    else:
        items = [np.asarray(v) for v in x]
    out = []
    for i, v in enumerate(items):
        if v.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected a 2-D [n, dim] array, got shape {v.shape}")
        out.append(v)
    dims = {v.shape[1] for v in out}
    if len(dims) > 1:
        raise ValueError(f"{name}: items have different embedding dims {sorted(dims)}")
    return out


def score(
    queries: ArrayOrList,
    documents: ArrayOrList,
    mode: str = "exact",
    block_rows: int = 1 << 18,
) -> np.ndarray:
    """MaxSim scores [n_queries, n_documents] float32.

    Documents are processed in blocks of about ``block_rows`` rows so memory stays bounded; fp16
    inputs are promoted to float32 block by block.
    """
    if mode not in ("exact", "reference"):
        raise ValueError(f"mode must be 'exact' or 'reference', got {mode!r}")
    qs = as_item_list(queries, "queries")
    ds = as_item_list(documents, "documents")
    out = np.zeros((len(qs), len(ds)), dtype=np.float32)
    if not qs or not ds:
        return out
    if qs[0].shape[1] != ds[0].shape[1]:
        raise ValueError(f"query dim {qs[0].shape[1]} != document dim {ds[0].shape[1]}")
    clamp = mode == "reference" and len({len(d) for d in ds}) > 1
    start = 0
    while start < len(ds):
        stop, rows = start, 0
        while stop < len(ds) and (rows == 0 or rows + len(ds[stop]) <= block_rows):
            rows += len(ds[stop])
            stop += 1
        block = ds[start:stop]
        # fp16 documents stay fp16 until the kernel, which converts them fast (see similarities).
        dtype = np.float16 if all(d.dtype == np.float16 for d in block) else np.float32
        packed = np.concatenate([d.astype(dtype, copy=False) for d in block], axis=0)  # [Nd, dim]
        offsets = np.cumsum([0] + [len(d) for d in block])
        out[:, start:stop] = score_packed(qs, packed, offsets, clamp=clamp, block_rows=block_rows)
        start = stop
    return out


def score_packed(
    queries: ArrayOrList,
    rows: np.ndarray,
    offsets: np.ndarray,
    clamp: bool = False,
    block_rows: int = 1 << 18,
) -> np.ndarray:
    """MaxSim of queries against documents stored back to back: document ``j`` is
    ``rows[offsets[j]:offsets[j+1]]``. ``rows`` may be an fp16 memory map (an index segment); it
    is read in blocks of whole documents of about ``block_rows`` rows, promoted to float32.

    Returns [n_queries, n_documents] float32. An empty query or document scores 0.
    """
    qs = as_item_list(queries, "queries")
    offsets = np.asarray(offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    out = np.zeros((len(qs), n_docs), dtype=np.float32)
    live = [i for i, q in enumerate(qs) if len(q)]
    if not live or n_docs <= 0:
        return out
    q_all = np.concatenate([qs[i].astype(np.float32, copy=False) for i in live], axis=0)  # [Nq, dim]
    q_starts = np.cumsum([0] + [len(qs[i]) for i in live])[:-1]
    lengths = np.diff(offsets)
    first = 0
    while first < n_docs:
        # Whole documents up to about block_rows rows (at least one).
        last = int(np.searchsorted(offsets, offsets[first] + block_rows, side="right")) - 1
        last = min(max(last, first + 1), n_docs)
        lo, hi = int(offsets[first]), int(offsets[last])
        sims = similarities(q_all, rows[lo:hi])  # [Nq, rows]
        keep = np.flatnonzero(lengths[first:last] > 0)  # reduceat cannot express an empty segment
        if len(keep):
            best = np.maximum.reduceat(sims, (offsets[first:last][keep] - lo), axis=1)  # [Nq, kept docs]
            if clamp:
                np.maximum(best, 0.0, out=best)
            out[np.ix_(live, first + keep)] = np.add.reduceat(best, q_starts, axis=0)
        first = last
    return out
