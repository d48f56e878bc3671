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

from collections.abc import Sequence

import numpy as np

__all__ = ["as_item_list", "score"]

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
    # Empty queries score 0 against everything; leave them out of the matmul.
    live = [i for i, q in enumerate(qs) if len(q)]
    if not live:
        return out
    q_all = np.concatenate([qs[i].astype(np.float32, copy=False) for i in live], axis=0)  # [Nq, dim]
    q_starts = np.cumsum([0] + [len(qs[i]) for i in live])[:-1]

    start = 0
    while start < len(ds):
        stop, rows = start, 0
        while stop < len(ds) and (rows == 0 or rows + len(ds[stop]) <= block_rows):
            rows += len(ds[stop])
            stop += 1
        block = ds[start:stop]
        d_all = np.concatenate([d.astype(np.float32, copy=False) for d in block], axis=0)  # [Nd, dim]
        sims = q_all @ d_all.T  # [Nq, Nd]
        d_starts = np.cumsum([0] + [len(d) for d in block])
        for k, d in enumerate(block):
            if len(d) == 0:
                # Nothing to match: upstream's padding would give 0 per row; exact MaxSim is empty.
                continue
            best = sims[:, d_starts[k] : d_starts[k + 1]].max(axis=1)  # [Nq]
            if clamp:
                np.maximum(best, 0.0, out=best)
            out[live, start + k] = np.add.reduceat(best, q_starts)
        start = stop
    return out
