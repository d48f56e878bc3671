"""Fidelity metrics: the one place that says how close two sets of embeddings are, and how close
is close enough (``Gate``).

``compare`` is what ``python -m export --validate``, the tests, the benchmarks and
``python -m runtime selftest`` call. It is numpy only (no torch), so the runtime can check a
bundle on the device that will run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .errors import InputError
from .scoring import score

__all__ = [
    "FP32_GATE",
    "REDUCED_GATE",
    "Fidelity",
    "Gate",
    "compare",
    "fidelity_report",
    "maxsim_rel_error",
    "topk_agreement",
]

ArrayOrList = np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class Fidelity:
    """Per-vector agreement of a candidate with a reference over the real rows."""

    rows: int
    mean_cos: float
    worst_cos: float
    max_abs: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"rows={self.rows} cos mean={self.mean_cos:.6f} worst={self.worst_cos:.6f} max-abs={self.max_abs:.2e}"


def _rows(x: ArrayOrList, mask: np.ndarray | None) -> np.ndarray:
    if isinstance(x, np.ndarray):
        arr = np.asarray(x, dtype=np.float64)
        if mask is not None:
            return arr[np.asarray(mask).astype(bool)]
        return arr.reshape(-1, arr.shape[-1])
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, np.shape(p)[-1]) for p in x]
    return np.concatenate(parts, axis=0)


def compare(reference: ArrayOrList, candidate: ArrayOrList, mask: np.ndarray | None = None) -> Fidelity:
    """Cosine (mean and worst row) and max-abs error of ``candidate`` against ``reference``.

    Inputs are [..., D] arrays (``mask`` [...] selects the real rows, e.g. an attention mask) or
    lists of [n, D] arrays holding real rows only. A row that is zero in both counts as equal;
    a non-finite value anywhere makes the cosine -1, so NaNs can never pass a gate.
    """
    ref, cand = _rows(reference, mask), _rows(candidate, mask)
    if ref.shape != cand.shape:
        raise InputError(f"shape mismatch: reference {ref.shape}, candidate {cand.shape}")
    if ref.shape[0] == 0:
        raise InputError("no rows to compare")
    dot = np.einsum("nd,nd->n", ref, cand)
    nr, nc = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    both_zero = (nr == 0) & (nc == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(both_zero, 1.0, dot / (nr * nc))
    cos = np.where(np.isfinite(cos), cos, -1.0)
    diff = np.abs(ref - cand)
    max_abs = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    return Fidelity(int(ref.shape[0]), float(cos.mean()), float(cos.min()), max_abs)


def maxsim_rel_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest |a - b| / |a| over a [Q, N] score matrix (|a| floored at 1e-12)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if not np.isfinite(candidate).all():
        return float("inf")
    return float((np.abs(reference - candidate) / np.maximum(np.abs(reference), 1e-12)).max())


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> float:
    """Mean overlap of each query's top-k documents (k clipped to N): 1.0 = same sets."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    k = max(1, min(k, reference.shape[1]))
    a = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    b = np.argsort(-candidate, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


@dataclass(frozen=True)
class Gate:
    """Thresholds against the PyTorch fp32 reference; one per precision (``export.recipes.GATES``)."""

    min_worst_cos: float
    min_mean_cos: float = 0.0
    max_abs: float | None = None  # only meaningful for unit-norm outputs (the text graph, the pipeline)
    # MaxSim scores of the whole pipeline (``--validate``, ``runtime selftest``); None: not checked.
    max_maxsim_rel_error: float | None = None

    def __str__(self) -> str:
        parts = [f"worst cos >= {self.min_worst_cos}"]
        if self.min_mean_cos:
            parts.append(f"mean cos >= {self.min_mean_cos}")
        if self.max_abs is not None:
            parts.append(f"max-abs <= {self.max_abs:.0e}")
        if self.max_maxsim_rel_error is not None:
            parts.append(f"MaxSim rel. error <= {self.max_maxsim_rel_error:.0e}")
        return ", ".join(parts)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gate:
        """The gate a bundle manifest records (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def failures(
        self, mean_cos: float, worst_cos: float, max_abs: float, unit_norm: bool, maxsim_rel_error: float | None = None
    ) -> list[str]:
        out = []
        limit = self.max_maxsim_rel_error
        if limit is not None and maxsim_rel_error is not None and not maxsim_rel_error <= limit:
            out.append(f"MaxSim relative error {maxsim_rel_error:.2e} > {limit:.0e}")
        if worst_cos < self.min_worst_cos:
            out.append(f"worst-token cosine {worst_cos:.6f} < {self.min_worst_cos}")
        if mean_cos < self.min_mean_cos:
            out.append(f"mean cosine {mean_cos:.6f} < {self.min_mean_cos}")
        if self.max_abs is not None and unit_norm and max_abs > self.max_abs:
            out.append(f"max-abs {max_abs:.2e} > {self.max_abs:.0e}")
        return out


# The two gates every engine shares (``export.recipes.GATES`` uses them too): fp32 against the
# PyTorch fp32 reference, and any reduced precision (int8, bf16): mean >= 0.995 and worst token
# >= 0.98 per graph, MaxSim within 2 % (docs/cpu-classes.md).
FP32_GATE = Gate(min_worst_cos=0.99999, max_abs=1e-4, max_maxsim_rel_error=1e-4)
REDUCED_GATE = Gate(min_worst_cos=0.98, min_mean_cos=0.995, max_maxsim_rel_error=2e-2)


def fidelity_report(
    ref_pages: list[np.ndarray],
    ref_queries: list[np.ndarray],
    pages: list[np.ndarray],
    queries: list[np.ndarray],
    gate: Gate,
) -> dict[str, Any]:
    """Pages and queries (real rows) against the reference's, judged by ``gate``."""
    fid_pages = compare(ref_pages, pages)
    fid_queries = compare(ref_queries, queries)
    s_ref, s_got = score(ref_queries, ref_pages), score(queries, pages)
    rel = maxsim_rel_error(s_ref, s_got)
    failures = gate.failures(fid_pages.mean_cos, fid_pages.worst_cos, fid_pages.max_abs, True, rel)
    failures += gate.failures(fid_queries.mean_cos, fid_queries.worst_cos, fid_queries.max_abs, True)
    return {
        "pages": fid_pages.as_dict(),
        "queries": fid_queries.as_dict(),
        "maxsim_rel_error": rel,
        "top1_agreement": topk_agreement(s_ref, s_got, 1),
        "top5_agreement": topk_agreement(s_ref, s_got, 5),
        "passed": not failures,
        "failures": failures,
    }
