"""Search over the local index: exact MaxSim over the memory-mapped fp16 segments, or two stages
(compact vectors in RAM score every page, the best ``rerank`` are scored exactly).

A ``Scanner`` keeps the last plan (page table, mapped files, per-segment spans) until any
connection commits: at 100k pages reading and grouping the table costs more than the candidate
stage itself. Damage is found: every segment mapped is verified against its sha256 while the
whole index is at most ``VERIFY_ON_OPEN_BYTES``, and whenever a score comes out non-finite.

The candidate stage scores packs, not segments: an index imported or added in commits of 16
pages has one segment per 16 pages, and a kernel call per segment made 1,250 calls a query at
20k pages, ~95% of the time in per-call overhead. Consecutive segments' compact vectors are
turned once into codes (``Compaction.to_codes``: uint8 and one scale per page, what RAM holds;
files are read once and not kept, unless the index dropped its originals) and concatenated into packs of about
``PACK_ROWS`` vectors, each scored in one ``score_codes`` call. Full packs survive a commit; only
the tail is rebuilt. The codes' scores only pick candidates: the exact stage (or, in an index
without originals, MaxSim over the float compact vectors) ranks what is returned."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import StoreError
from ...scoring import ROW_ZERO, CodeLayout, quantize_rows, score_codes, score_packed
from ..base import DEFAULT_RERANK, Hit, decode_path
from ..compact import Compaction
from .catalog import Catalog
from .segments import SegmentFiles, will_need

__all__ = ["VERIFY_ON_OPEN_BYTES", "Scanner"]


# A search verifies the sha256 of every segment it maps when the whole index is at most this big
# (~3,700 single-tile pages); larger ones rely on `index check` and the non-finite guard.
VERIFY_ON_OPEN_BYTES = 256 << 20

# Compact vectors per pack (16 MB of pool:K fp16 vectors): large enough that the per-call cost
# vanishes, small enough that rebuilding the tail after a commit is a few milliseconds.
PACK_ROWS = 1 << 16


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
class _Pack:
    """Consecutive segments' compact vectors back to back, in one array."""

    segs: tuple[tuple[int, str], ...]  # (segment, compact file), in storage order
    codes: np.ndarray  # [rows, width] uint8 (Compaction.to_codes)
    scale: np.ndarray  # [rows] float32
    base: dict[int, int]  # segment -> its first row in codes


@dataclass(frozen=True)
class _PackSpans:
    """One pack's pages in a search plan: the pack is scored as documents back to back, each live
    span one document (pages sharing rows share it), dead rows between spans as filler documents."""

    pack: _Pack
    layout: CodeLayout  # document bounds in pack.codes, as score_codes reads them
    scale: np.ndarray  # [documents] each document's scale (every row of a page carries its page's)
    idx: np.ndarray  # positions in the plan's rows (pages with compact vectors)
    doc: np.ndarray  # each of those pages' document (a page without compact vectors is not listed: it scores 0)


@dataclass(frozen=True)
class _SearchPlan:
    key: tuple[int, int, bool]  # (data_version, this connection's total_changes, two_stage)
    rows: list[tuple]
    maps: dict[int, Any]  # segment -> fp16 memory map
    cmaps: dict[int, Any]  # segment -> compact vectors' memory map (two-stage plans)
    verified: bool
    groups: list[_SegmentSpans]  # the originals' spans per segment
    packs: list[_PackSpans]  # two-stage plans: the compact vectors' spans per pack


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
        self._packs: list[_Pack] = []  # the last two-stage plan's packs, reused while their segments live
        # Seconds the last search spent per stage ("plan", "candidate", "rerank"; "exact" for one
        # stage), for benchmarks and a service's timing breakdown.
        self.timings: dict[str, float] = {}

    def close(self) -> None:
        self._plans.clear()
        self._packs = []

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

        t0 = time.perf_counter()
        plan = self._plan(two_stage)
        t1 = time.perf_counter()
        self.timings = {"plan": t1 - t0}
        rows = plan.rows
        if not rows:
            return [[] for _ in queries]
        if not two_stage:
            scores = self._score_all(queries, plan, compact=False)
            self.timings["exact"] = time.perf_counter() - t1
            return [_top(row, k, rows) for row in scores]
        candidate = self._score_all(queries, plan, compact=True)
        t2 = time.perf_counter()
        self.timings["candidate"] = t2 - t1
        n = min(len(rows), max(k, rerank or DEFAULT_RERANK))
        if self.keeps_originals:  # rows [start, count] of a page's originals
            maps, first, dim, decode = plan.maps, 3, None, None
        else:  # no originals: MaxSim over the float compact vectors ranks the candidates
            maps, first, dim, decode = plan.cmaps, 9, self.segments.dim, self.compaction.to_float
        out = []
        for q, row in zip(queries, candidate, strict=True):
            picks = np.argpartition(-row, n - 1)[:n]
            spans = [(rows[i][0], rows[i][first], rows[i][first + 1]) for i in picks]
            for seg, a, c in spans:  # ask for every span at once: one page fault after another is slow I/O
                if c:
                    will_need(maps[seg], a, c)
            parts = [maps[seg][a : a + c] for seg, a, c in spans if c]
            exact_rows = np.concatenate(parts) if parts else np.zeros((0, self.segments.dim), np.float16)
            if decode is not None:
                exact_rows = decode(exact_rows, dim) if len(exact_rows) else np.zeros((0, dim), np.float32)
            offsets = np.concatenate([[0], np.cumsum([c for _, _, c in spans])])
            s = score_packed([q], exact_rows, offsets)[0]
            if not np.isfinite(s).all():
                raise StoreError(f"{root}: non-finite scores in the rerank; run index check")
            full = np.full(len(rows), -np.inf, np.float32)
            full[picks] = s
            out.append(_top(full, min(k, n), rows))
        self.timings["rerank"] = time.perf_counter() - t2
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
        # A segment's compact vectors are read once, in the snapshot, and turned into codes there;
        # RAM keeps only the codes. With originals kept nothing reads the file again, so it is read
        # into memory and let go, not mapped: a map holds a file descriptor, and the fp16 maps
        # alone are one per segment (18,750 at 300k pages against a common limit of 20,000). An
        # index without originals keeps its compact files mapped for the rerank.
        kind, dim = self.compaction, segs.dim
        have = {key for p in self._packs for key in p.segs}

        def snapshot() -> tuple[list[tuple], dict[int, Any], dict[int, Any], dict[int, tuple], bool]:
            # One read transaction: a writer cannot commit (and so cannot delete a segment this
            # reads) until the files are mapped or read; a mapped file stays readable after deletion.
            with catalog.snapshot():
                rows = catalog.plan_rows()
                total = sum(size for size, _ in segs.expected(catalog.segment_rows()).values())
                verify = total <= VERIFY_ON_OPEN_BYTES
                maps, cmaps, fresh = {}, {}, {}
                spans: dict[int, list[tuple[int, int]]] = {}  # segment -> its pages' compact rows
                for r in rows if two_stage else ():
                    spans.setdefault(r[0], []).append((r[9], r[10]))
                for seg, file, nrows, *_rest in rows:
                    cfile, crows = _rest[4], _rest[5]
                    if seg in maps or seg in cmaps or seg in fresh:
                        continue
                    if file is not None and self.keeps_originals:
                        maps[seg] = segs.fp16(seg, file, nrows, verify=verify)
                    if not two_stage:
                        continue
                    if not self.keeps_originals:
                        cmaps[seg] = segs.compact(seg, cfile, crows, verify=verify)
                    if (seg, cfile) not in have:
                        bounds = _page_bounds(spans[seg], crows)
                        if self.keeps_originals:
                            data = segs.read_compact(seg, cfile, crows, verify=verify)
                            fresh[seg] = kind.to_codes(data, dim, bounds)
                        else:
                            fresh[seg] = kind.to_codes(cmaps[seg], dim, bounds)
                            segs.release(cmaps[seg])
            return rows, maps, cmaps, fresh, verify

        rows, maps, cmaps, fresh, verified = catalog.db(snapshot)
        segs.keep_only(set(maps) | set(cmaps))
        by_seg: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_seg.setdefault(r[0], []).append(i)
        groups = []
        for seg, idx in by_seg.items() if maps and not two_stage else ():  # the rerank reads maps directly
            starts = np.array([rows[i][3] for i in idx], np.int64)
            counts = np.array([rows[i][4] for i in idx], np.int64)
            contiguous = bool(np.array_equal(starts[1:], (starts + counts)[:-1]))
            groups.append(_SegmentSpans(seg, np.array(idx, np.int64), starts, counts, rows[idx[0]][1], contiguous,
                                        np.concatenate([[0], np.cumsum(counts)])))  # fmt: skip
        packs = []
        if two_stage:
            files = {r[0]: (r[7], r[8]) for r in rows if r[7] is not None}
            self._packs = self._pack([(seg, f, n, fresh.get(seg)) for seg, (f, n) in sorted(files.items())])
            packs = [_pack_spans(p, rows, by_seg) for p in self._packs]
        plan = _SearchPlan(key, rows, maps, cmaps, verified, groups, packs)
        self._plans[two_stage] = plan
        return plan

    def _pack(self, segments: list[tuple[int, str, int, tuple | None]]) -> list[_Pack]:
        """Group (segment, compact file, vectors, fresh codes) into packs of about ``PACK_ROWS``
        codes, keeping every full pack of the last plan whose segments are all still there, in the
        same order, and taking the codes of any other segment from the pack that holds them (those
        come without fresh codes). Segment ids are never reused, so the same id is the same bytes."""
        old = {p.segs[0]: p for p in self._packs if len(p.codes) >= PACK_ROWS}
        known = {(s, f): (p, p.base[s]) for p in self._packs for s, f in p.segs}
        out: list[_Pack] = []
        pending: list[tuple[int, str, np.ndarray, np.ndarray]] = []
        size = 0  # rows in pending

        def flush() -> None:
            nonlocal size
            size = 0
            if not pending:
                return
            base = np.concatenate([[0], np.cumsum([len(c) for _, _, c, _ in pending])])
            # concatenate copies: a pack owns its arrays, never a view that keeps an old pack alive
            codes = np.concatenate([c for _, _, c, _ in pending])
            scale = np.concatenate([sc for _, _, _, sc in pending])
            out.append(_Pack(tuple((s, f) for s, f, _, _ in pending), codes, scale,
                             {s: int(b) for (s, _, _, _), b in zip(pending, base, strict=False)}))  # fmt: skip
            pending.clear()

        i = 0
        while i < len(segments):
            seg, cfile, crows, made = segments[i]
            p = old.get((seg, cfile))
            if p is not None and tuple((s, f) for s, f, _, _ in segments[i : i + len(p.segs)]) == p.segs:
                flush()
                out.append(p)
                i += len(p.segs)
                continue
            if made is not None:
                codes, scale = made
            elif (seg, cfile) in known:
                p, lo = known[(seg, cfile)]
                codes, scale = p.codes[lo : lo + crows], p.scale[lo : lo + crows]
            else:  # the snapshot makes codes for every segment no pack holds
                raise StoreError(f"{self.segments.dir / cfile}: compact vectors neither read nor packed")
            pending.append((seg, cfile, codes, scale))
            size += len(codes)
            if size >= PACK_ROWS:
                flush()
            i += 1
        flush()
        return out

    def _score_all(self, queries: Sequence[np.ndarray], plan: _SearchPlan, compact: bool) -> np.ndarray:
        """[Q, pages] MaxSim over the originals (or the compact vectors) of every page, in ``plan.rows`` order."""
        if compact:
            return self._score_packs(queries, plan)
        scores = np.empty((len(queries), len(plan.rows)), np.float32)
        for g in plan.groups:
            arr = plan.maps[g.seg]
            offsets = g.offsets
            if g.contiguous:  # score in place
                lo = int(g.starts[0])
                s = score_packed(queries, arr[lo : lo + int(offsets[-1])], offsets)
            else:
                packed = np.concatenate([arr[a : a + c] for a, c in zip(g.starts, g.counts, strict=True)])
                s = score_packed(queries, packed, offsets)
            if not np.isfinite(s).all():
                if not plan.verified:  # raises when the file was damaged
                    self.segments.verify(g.seg, g.file, arr)
                raise StoreError(f"{self.segments.dir / g.file}: non-finite scores; the index is damaged")
            scores[:, g.idx] = s
        return scores

    def _score_packs(self, queries: Sequence[np.ndarray], plan: _SearchPlan) -> np.ndarray:
        scores = np.zeros((len(queries), len(plan.rows)), np.float32)
        decode = self.compaction.code_decoder(self.segments.dim)
        for ps in plan.packs:
            if not ps.layout.blocks:  # only vector-less pages: they score 0
                continue
            s = score_codes(queries, ps.pack.codes, ps.scale, ps.layout, decode=decode)[:, ps.doc]
            if not np.isfinite(s).all():
                bad = [plan.rows[i] for i in ps.idx[~np.isfinite(s).all(axis=0)]]
                if not plan.verified:  # raises when the file was damaged
                    for seg, cfile, crows in sorted({(r[0], r[7], r[8]) for r in bad}):
                        self.segments.compact(seg, cfile, crows, verify=True)
                raise StoreError(f"{self.segments.dir / bad[0][7]}: non-finite scores; the index is damaged")
            scores[:, ps.idx] = s
        return scores


def _pack_spans(pack: _Pack, rows: list[tuple], by_seg: dict[int, list[int]]) -> _PackSpans:
    """The documents ``score_codes`` reads from one pack, and which document each page is."""
    idx = np.array([i for seg, _ in pack.segs for i in by_seg.get(seg, ())], np.int64)
    start = np.array([pack.base[rows[i][0]] + rows[i][9] for i in idx], np.int64)
    count = np.array([rows[i][10] for i in idx], np.int64)
    live = count > 0
    idx, start, count = idx[live], start[live], count[live]
    if not len(idx):
        return _PackSpans(pack, CodeLayout.build(np.zeros(1, np.int64)), np.zeros(0, np.float32), idx, idx)
    spans, doc = np.unique(np.stack([start, count], axis=1), axis=0, return_inverse=True)
    lo, hi = spans[:, 0], spans[:, 0] + spans[:, 1]
    if np.any(hi[:-1] > lo[1:]):
        # Overlapping spans are damage (a commit writes each page's vectors once, and pages that
        # share rows share the whole span): score each span as its own copy, right anyway.
        take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        layout = CodeLayout.build(np.concatenate([[0], np.cumsum(spans[:, 1])]))
        codes, scale = pack.codes[take], pack.scale[take]
        doc_scale = layout.doc_scale(scale)
        if not np.array_equal(np.repeat(doc_scale, spans[:, 1]), scale, equal_nan=True):
            # the snapshot gave each piece of an overlap its own scale: one per span again
            codes, scale = quantize_rows((codes.astype(np.float32) - ROW_ZERO) * scale[:, None], layout.offsets)
            doc_scale = layout.doc_scale(scale)
        copy = _Pack(pack.segs, codes, scale, pack.base)
        return _PackSpans(copy, layout, doc_scale, idx, doc.ravel())
    # Bounds of every span and of the dead rows between them: documents back to back.
    bounds, where = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    layout = CodeLayout.build(bounds)
    return _PackSpans(pack, layout, layout.doc_scale(pack.scale), idx, where[: len(lo)][doc.ravel()])


def _page_bounds(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    """Document offsets from 0 to ``n`` over one segment's compact rows: each page's span, and
    the rows between pages as documents of their own (what ``Compaction.to_codes`` quantizes)."""
    edges = np.array([0, n, *(x for a, c in spans for x in (a, a + c))], np.int64)
    return np.unique(np.clip(edges, 0, n))


def _top(row: np.ndarray, k: int, rows: list[tuple]) -> list[Hit]:
    kk = min(k, len(row))
    top = np.argpartition(-row, kk - 1)[:kk]
    top = top[np.lexsort((top, -row[top]))]  # by score, ties by storage order
    return [Hit(r + 1, float(row[i]), decode_path(rows[i][5]), rows[i][6]) for r, i in enumerate(top)]
