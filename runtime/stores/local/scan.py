"""Search over the local index: exact MaxSim over the memory-mapped fp16 segments, or two stages
(compact vectors in RAM score every page, the best ``rerank`` are scored exactly).

A ``Scanner`` keeps the last plan (page table, mapped files, per-segment spans) until any
connection commits: at 100k pages reading and grouping the table costs more than the candidate
stage itself. Damage is found: every segment mapped is verified against its sha256 while the
whole index is at most ``VERIFY_ON_OPEN_BYTES``, and whenever a score comes out non-finite."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import StoreError
from ...scoring import score_packed
from ..base import DEFAULT_RERANK, Hit, decode_path
from ..compact import Compaction
from .catalog import Catalog
from .segments import SegmentFiles, will_need

__all__ = ["VERIFY_ON_OPEN_BYTES", "Scanner"]


# A search verifies the sha256 of every segment it maps when the whole index is at most this big
# (~3,700 single-tile pages); larger ones rely on `index check` and the non-finite guard.
VERIFY_ON_OPEN_BYTES = 256 << 20


@dataclass(frozen=True)
class _SegmentSpans:
    """One segment's pages in a search plan: where they sit in the plan's page order and in the file."""

    seg: int
    idx: np.ndarray  # positions in the plan's rows
    starts: np.ndarray  # first row (or compact vector) of each page
    counts: np.ndarray
    file: str
    contiguous: bool  # pages back to back: scored in place, no copy
    offsets: np.ndarray  # [0, cumsum(counts)]: the kernel's document bounds, built once per plan


@dataclass(frozen=True)
class _SearchPlan:
    key: tuple[int, int, bool]  # (data_version, this connection's total_changes, two_stage)
    rows: list[tuple]
    maps: dict[int, Any]  # segment -> fp16 memory map
    cdata: dict[int, Any]  # segment -> compact vectors in RAM
    verified: bool
    groups: dict[bool, list[_SegmentSpans]]  # compact? -> spans per segment


class Scanner:
    """Scores queries against every page the catalog lists, reading through ``segments``."""

    def __init__(
        self, catalog: Catalog, segments: SegmentFiles, compaction: Compaction | None, keeps_originals: bool
    ) -> None:
        self.catalog = catalog
        self.segments = segments
        self.compaction = compaction
        self.keeps_originals = keeps_originals
        self._plans: dict[bool, _SearchPlan] = {}  # two_stage -> the last search's plan

    def close(self) -> None:
        self._plans.clear()

    def search(
        self, queries: Sequence[np.ndarray], k: int = 10, rerank: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """MaxSim of each query [n_q, dim] against every page; top ``k`` per query (see ``Index.search``)."""
        root = self.catalog.root
        if k < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        if rerank is not None and rerank < 1:
            raise StoreError(f"--rerank must be at least 1, got {rerank}")
        two_stage = self.compaction is not None and not exact
        if exact and not self.keeps_originals:
            raise StoreError(f"{root}: this index dropped its original vectors; exact search is not possible")

        plan = self._plan(two_stage)
        rows = plan.rows
        if not rows:
            return [[] for _ in queries]
        if not two_stage:
            scores = self._score_all(queries, plan, compact=False)
            return [_top(row, k, rows) for row in scores]
        candidate = self._score_all(queries, plan, compact=True)
        if not self.keeps_originals:
            return [_top(row, k, rows) for row in candidate]
        n = min(len(rows), max(k, rerank or DEFAULT_RERANK))
        out = []
        for q, row in zip(queries, candidate, strict=True):
            picks = np.argpartition(-row, n - 1)[:n]
            spans = [(rows[i][0], rows[i][3], rows[i][4]) for i in picks]
            for seg, a, c in spans:  # ask for every span at once: one page fault after another is slow I/O
                will_need(plan.maps[seg], a, c)
            exact_rows = np.concatenate([plan.maps[seg][a : a + c] for seg, a, c in spans])
            offsets = np.concatenate([[0], np.cumsum([c for _, _, c in spans])])
            s = score_packed([q], exact_rows, offsets)[0]
            if not np.isfinite(s).all():
                raise StoreError(f"{root}: non-finite scores in the exact stage; run index check")
            full = np.full(len(rows), -np.inf, np.float32)
            full[picks] = s
            out.append(_top(full, min(k, n), rows))
        return out

    def _plan(self, two_stage: bool) -> _SearchPlan:
        """The page table, mapped files and per-segment spans a search scores; built once and
        reused while no connection has committed (SQLite's data_version and this connection's
        change count)."""
        key = (*self.catalog.version(), two_stage)
        cached = self._plans.get(two_stage)
        if cached is not None and cached.key == key:
            return cached
        catalog, segs = self.catalog, self.segments

        def snapshot() -> tuple[list[tuple], dict[int, Any], dict[int, Any], bool]:
            # One read transaction: a writer cannot commit (and so cannot delete a segment this
            # reads) until the files are mapped or read; a mapped file stays readable after deletion.
            with catalog.snapshot():
                rows = catalog.plan_rows()
                total = sum(size for size, _ in segs.expected(catalog.segment_rows()).values())
                verify = total <= VERIFY_ON_OPEN_BYTES
                maps, cdata = {}, {}
                for seg, file, nrows, *_rest in rows:
                    cfile, crows = _rest[4], _rest[5]
                    if seg in maps or seg in cdata:
                        continue
                    if file is not None and self.keeps_originals:
                        maps[seg] = segs.fp16(seg, file, nrows, verify=verify)
                    if two_stage:
                        cdata[seg] = segs.compact(seg, cfile, crows, verify=verify)
            return rows, maps, cdata, verify

        rows, maps, cdata, verified = catalog.db(snapshot)
        segs.keep_only(set(maps) | set(cdata))
        by_seg: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_seg.setdefault(r[0], []).append(i)
        groups: dict[bool, list[_SegmentSpans]] = {}
        for compact in (False, True) if two_stage else (False,):
            if not compact and not maps:
                continue
            start_col, count_col, file_col = (9, 10, 7) if compact else (3, 4, 1)
            groups[compact] = []
            for seg, idx in by_seg.items():
                starts = np.array([rows[i][start_col] for i in idx], np.int64)
                counts = np.array([rows[i][count_col] for i in idx], np.int64)
                contiguous = bool(np.array_equal(starts[1:], (starts + counts)[:-1]))
                groups[compact].append(_SegmentSpans(seg, np.array(idx, np.int64), starts, counts,
                                                     rows[idx[0]][file_col], contiguous,
                                                     np.concatenate([[0], np.cumsum(counts)])))  # fmt: skip
        plan = _SearchPlan(key, rows, maps, cdata, verified, groups)
        self._plans[two_stage] = plan
        return plan

    def _score_all(self, queries: Sequence[np.ndarray], plan: _SearchPlan, compact: bool) -> np.ndarray:
        """[Q, pages] MaxSim over the originals (or the compact vectors) of every page, in ``plan.rows`` order."""
        scores = np.empty((len(queries), len(plan.rows)), np.float32)
        arrays = plan.cdata if compact else plan.maps
        kind, dim = self.compaction, self.segments.dim
        fp16_view = compact and kind.is_fp16
        decode = (lambda data: kind.to_float(data, dim)) if compact and not fp16_view else None
        for g in plan.groups[compact]:
            arr = arrays[g.seg]
            if fp16_view:
                arr = kind.to_float(arr, dim)
            offsets = g.offsets
            if g.contiguous:  # score in place
                lo = int(g.starts[0])
                s = score_packed(queries, arr[lo : lo + int(offsets[-1])], offsets, decode=decode)
            else:
                packed = np.concatenate([arr[a : a + c] for a, c in zip(g.starts, g.counts, strict=True)])
                s = score_packed(queries, packed, offsets, decode=decode)
            if not np.isfinite(s).all():
                if not plan.verified:  # raises when the file was damaged
                    self.segments.verify(g.seg, g.file, arr, "csha256" if compact else "sha256")
                raise StoreError(f"{self.segments.dir / g.file}: non-finite scores; the index is damaged")
            scores[:, g.idx] = s
        return scores


def _top(row: np.ndarray, k: int, rows: list[tuple]) -> list[Hit]:
    kk = min(k, len(row))
    top = np.argpartition(-row, kk - 1)[:kk]
    top = top[np.lexsort((top, -row[top]))]  # by score, ties by storage order
    return [Hit(r + 1, float(row[i]), decode_path(rows[i][5]), rows[i][6]) for r, i in enumerate(top)]
