"""Keeping the local index whole: what the catalog knows against what is on disk (``inventory``),
computed once and read by both the writer's crash recovery (``recover``) and ``check``; and
``compact``, which rewrites live rows through the catalog's one commit protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import StoreError
from .catalog import Catalog
from .segments import SEGMENTS, TMP_PREFIX, SegmentFiles

__all__ = ["Inventory", "check", "compact", "inventory", "recover"]


@dataclass(frozen=True)
class Inventory:
    known: dict[str, tuple[int, str]]  # every file the segments table names -> (bytes, sha256)
    doomed: set[str]  # files in intents: about to be written, or doomed and about to be deleted
    on_disk: dict[str, Path]  # what segments/ holds

    @property
    def strays(self) -> list[str]:
        """Files nobody knows: not a segment's, not intended, not a temp file. Never deleted."""
        return sorted(n for n in self.on_disk if n not in self.known and n not in self.doomed
                      and not n.startswith(TMP_PREFIX))  # fmt: skip

    @property
    def leftovers(self) -> list[str]:
        """What an interrupted writer left: temp files and intended files no segment holds."""
        return [n for n in self.on_disk if n.startswith(TMP_PREFIX) or (n in self.doomed and n not in self.known)]


def inventory(catalog: Catalog, segments: SegmentFiles) -> Inventory:
    """Known files, intents and the folder's listing (inside ``catalog.db``)."""
    return Inventory(segments.expected(catalog.segment_rows()), catalog.intents(), segments.listing())


def recover(catalog: Catalog, segments: SegmentFiles) -> None:
    """Prove the database whole, then delete exactly what an interrupted writer left."""
    problems = catalog.integrity()
    inv = inventory(catalog, segments)
    for name, (size, _) in inv.known.items():
        f = inv.on_disk.get(name)
        if f is None or f.stat().st_size != size:
            problems.append(f"segment {name} is missing or has the wrong size")
    if inv.strays:
        problems.append(
            f"{len(inv.strays)} file(s) in {SEGMENTS}/ that the database does not know (e.g. {inv.strays[0]})"
        )
    if problems:
        raise StoreError(
            f"{catalog.root}: the index is damaged ({problems[0]}{'; ...' if len(problems) > 1 else ''}); "
            "nothing was changed or deleted. See: python -m runtime index check --index DIR"
        )
    for name in inv.leftovers:
        inv.on_disk[name].unlink()
    if inv.doomed:
        catalog.forget(sorted(inv.doomed))


def check(catalog: Catalog, segments: SegmentFiles) -> list[str]:
    """Every problem found (empty list = healthy): SQLite's integrity check, each segment's
    files, sizes and sha256, page spans inside their segment and overlapping only when
    shared, files the database does not know, and interrupted writes not yet cleaned up.

    Safe beside a writer: the catalog and the folder are read in one snapshot (no commit, and so
    no deletion, can land inside it), and the files are hashed after it, a file that fails being
    reported only if the catalog still names it (a compaction may have retired it meanwhile)."""

    def snapshot() -> tuple[list[str], Inventory]:
        with catalog.snapshot():
            return catalog.integrity() + _span_problems(catalog), inventory(catalog, segments)

    problems, inv = catalog.db(snapshot)
    for name, (size, digest) in sorted(inv.known.items()):
        problem = _file_problem(segments.dir / name, size, digest)
        if problem and catalog.db(lambda name=name: catalog.names_file(name)):
            problems.append(f"segment {name}{problem}")
    problems += [f"file {SEGMENTS}/{name} is not in the database" for name in inv.strays]
    return problems


def _file_problem(path: Path, size: int, digest: str) -> str:
    """'' when the file holds what was committed, else what is wrong (after the segment's name)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return " missing"
    except OSError as exc:
        return f": cannot be read ({exc.strerror or exc})"
    if len(data) != size:
        return f": {len(data)} bytes, expected {size}"
    if hashlib.sha256(data).hexdigest() != digest:
        return ": sha256 mismatch (contents changed since commit)"
    return ""


def _span_problems(catalog: Catalog) -> list[str]:
    """Page spans outside their segment, overlapping ones that are not shared, orphaned pages."""
    problems = []
    conn = catalog.conn
    segs = conn.execute("SELECT id, file, rows, cfile, crows FROM segments NOT INDEXED").fetchall()
    for seg_id, file, rows, cfile, crows in segs:
        for label, col_a, col_c, limit in ((file, "row_start", "row_count", rows),
                                           (cfile, "c_start", "c_count", crows)):  # fmt: skip
            if label is None:
                continue
            spans = conn.execute(
                f"SELECT DISTINCT {col_a}, {col_c} FROM pages WHERE segment = ? ORDER BY {col_a}", (seg_id,)
            ).fetchall()
            end = 0
            for start, count in spans:
                if start < end or start + count > limit or count <= 0:
                    problems.append(f"segment {label}: bad page span {start}+{count}")
                end = max(end, start + count)
    orphans = conn.execute("SELECT COUNT(*) FROM pages WHERE segment NOT IN (SELECT id FROM segments)")
    if (n := orphans.fetchone()[0]) > 0:
        problems.append(f"{n} page(s) point at segments that do not exist")
    return problems


def compact(catalog: Catalog, segments: SegmentFiles) -> dict[str, int]:
    """Rewrite the live rows of segments that hold dead ones into one new segment (the caller
    holds the writer lock), crash-safe like an add. Returns before/after row counts."""

    def plan() -> tuple[list[tuple], list[tuple]]:
        segs = catalog.conn.execute("SELECT id, file, rows, cfile, crows FROM segments").fetchall()
        return segs, catalog.live_spans()

    segs, spans = catalog.db(plan)
    live: dict[int, list[int]] = {}
    for seg, _a, count, _c, ccount in spans:
        acc = live.setdefault(seg, [0, 0])
        acc[0] += count
        acc[1] += ccount
    sparse = {i: (f, r, cf, cr) for i, f, r, cf, cr in segs if live.get(i, [0, 0]) != [r, cr]}
    before = sum(r for _, _, r, _, _ in segs)
    if not sparse:
        return {"rows_before": before, "rows_after": before, "segments_rewritten": 0}
    parts, cparts, new_span, cursor, ccursor = [], [], {}, 0, 0
    for span in [sp for sp in spans if sp[0] in sparse]:
        seg, start, count, cstart, ccount = span
        file, rows, cfile, crows = sparse[seg]
        # Verified first: never launder damage into a fresh checksum.
        if file is not None:
            parts.append(np.asarray(segments.fp16(seg, file, rows, verify=True)[start : start + count]))
        if cfile is not None:
            cparts.append(segments.compact(seg, cfile, crows, verify=True)[cstart : cstart + ccount])
        new_span[span] = (cursor, ccursor)
        cursor, ccursor = cursor + count, ccursor + ccount
    new = None
    if new_span:
        originals = np.concatenate(parts).astype(np.float16) if parts else None
        new = segments.new(originals, cursor, np.concatenate(cparts) if cparts else None)

    def apply(new_id: int | None) -> None:
        for (seg, start, count, cstart, ccount), (new_start, new_cstart) in new_span.items():
            catalog.conn.execute(
                "UPDATE pages SET segment = ?, row_start = ?, c_start = ? "
                "WHERE segment = ? AND row_start = ? AND row_count = ? AND c_start = ? AND c_count = ?",
                (new_id, new_start, new_cstart, seg, start, count, cstart, ccount),
            )

    catalog.commit(new, segments, apply)
    after = catalog.db(lambda: catalog.conn.execute("SELECT COALESCE(SUM(rows), 0) FROM segments").fetchone()[0])
    return {"rows_before": before, "rows_after": int(after), "segments_rewritten": len(sparse)}
