"""A crash-safe on-disk multi-vector index: fp16 segments + SQLite metadata.

Layout of ``DIR``::

    index.sqlite          meta (bundle identity, dim), segments, pages, intents
    segments/<id>.f16     raw float16 rows [n, dim] of one commit, written once, never changed
    index.lock            writers take an exclusive flock on it

A page is identified by (path, page number); paths are stored as the file system's bytes, so any
name works. Pages with identical bytes under other paths share stored rows. The guarantees and
how each is kept:

* **A commit is all or nothing.** Rows go to a temp file, fsynced and renamed to a fresh segment
  name, before the SQLite transaction (journal DELETE, synchronous FULL) that points pages at it.
* **Nothing stored is ever deleted by mistake.** Before a segment file is written its name is
  committed to ``intents``, and a removal or compaction adds the names it will delete in the same
  transaction that unreferences them. The clean-up after a crash deletes only files that are in
  ``intents`` and in no segment row, plus ``.tmp-`` files. Any other file the database does not
  know, a failed ``PRAGMA integrity_check``, or a segment row whose file is missing or of the
  wrong size stops a writer with one line, having deleted nothing.
* **Ids are never reused** (``AUTOINCREMENT``): a reader's cached memory map of segment N is
  valid for as long as the process lives. A search reads the page table and maps the files inside
  one read transaction, so a concurrent remove or compaction cannot delete them in between.
* **Damage is found.** Every segment's sha256 is recorded at commit and verified by ``check``,
  by a search when the index is small (``VERIFY_ON_OPEN_BYTES``), and whenever a score comes out
  non-finite; NaN never reaches a result.
* **Creating an index is atomic** (built in a temp directory, renamed into place).

``Index`` is the facade: it holds the writer lock and hands the work to four parts, each an
object it owns: ``Catalog`` (SQLite: schema, migration, the one commit protocol), ``SegmentFiles``
(the files: atomic write, mmap, sha256), ``Scanner`` (plan cache, blocked MaxSim, two-stage
rerank) and ``upkeep`` (recovery, check and compact over one known-versus-on-disk inventory).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, StoreError
from ...workers import parallel_map
from ..base import DEFAULT_RERANK, Hit, PageRecord, bundle_identity, check_identity, decode_path, encode_path
from ..compact import Compaction
from . import durable, upkeep
from .catalog import SCHEMA_VERSION, Catalog, connect, init_schema
from .durable import DB
from .scan import Scanner
from .segments import SEGMENTS, SegmentFiles

__all__ = ["DB", "DEFAULT_RERANK", "SEGMENTS", "Hit", "Index", "PageRecord", "bundle_identity", "check_identity",
           "decode_path", "encode_path"]  # fmt: skip

LOCK = "index.lock"


class Index:
    """The local ``Store``: open with ``Index.open(dir)`` (existing) or ``Index.create(dir, identity)``."""

    shares_rows = True

    def __init__(
        self, root: Path, conn: Any, compaction: Compaction | None = None, keeps_originals: bool = True
    ) -> None:
        self.root = root
        self.conn = conn
        self.compaction = compaction
        self.keeps_originals = keeps_originals
        self.catalog = Catalog(root, conn)
        self._locked = False
        self._parts: tuple[SegmentFiles, Scanner] | None = None

    @property
    def segments(self) -> SegmentFiles:
        return self._built()[0]

    @property
    def scanner(self) -> Scanner:
        return self._built()[1]

    def _built(self) -> tuple[SegmentFiles, Scanner]:
        # Built on first use: the dimension comes from meta, which a migration may have to write first.
        if self._parts is None:
            files = SegmentFiles(self.root, self.dim, self.compaction, self.catalog.digest)
            self._parts = files, Scanner(self.catalog, files, self.compaction, self.keeps_originals)
        return self._parts

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        identity: dict[str, str],
        compact: Compaction | str | None = None,
        keep_originals: bool = True,
    ) -> Index:
        """A new empty index at ``root`` (absent, or an empty directory), all at once: it is built
        beside ``root`` and renamed into place, so a crash leaves no half-made index.

        ``compact``: a compact representation (``runtime.stores.compact``) stored beside every page's
        rows and searched first; ``keep_originals=False`` stores only it (smallest; its scores
        are then the compact ones)."""
        root = Path(root)
        kind = Compaction.parse(compact) if isinstance(compact, str) else compact
        if not keep_originals and kind is None:
            raise StoreError("an index that drops the original vectors needs a compact representation (--compact)")
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: is a file, not an index directory")
        if (root / DB).exists():
            raise StoreError(f"{root}: an index already exists here")
        if root.is_dir() and any(root.iterdir()):
            raise StoreError(f"{root}: exists and is not an index (and not empty); choose a new directory")
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "created": _now_iso(),
            **identity,
            "compact": str(kind) if kind else "none",
            "originals": "kept" if keep_originals else "dropped",
        }

        def build(tmp: Path) -> None:
            (tmp / SEGMENTS).mkdir()
            conn = connect(tmp / DB)
            try:
                init_schema(conn, meta)
            finally:
                conn.close()
            durable.fsync_dir(tmp / SEGMENTS)

        durable.create_atomically(root, build, "an index")
        return cls.open(root)

    @classmethod
    def open(cls, root: str | os.PathLike) -> Index:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: is a file, not an index directory")
        if not (root / DB).is_file():
            raise StoreError(f"{root}: no index here (create one with: python -m runtime index add --index DIR ...)")
        if not (root / SEGMENTS).is_dir():
            raise StoreError(f"{root}: {SEGMENTS}/ is missing; the index is damaged (its vectors are gone)")
        try:
            conn = connect(root / DB)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{root / DB}: not a readable index database ({exc})") from exc
        version = meta.get("schema_version")
        if version in ("1", "2"):
            Catalog(root, conn).migrate(int(version))
        elif version != str(SCHEMA_VERSION):
            conn.close()
            raise StoreError(f"{root}: index schema {version!r}, this runtime reads {SCHEMA_VERSION}")
        for key in ("dim", "precision", "bundle_manifest_sha256"):
            if key not in meta:
                conn.close()
                raise StoreError(f"{root / DB}: meta has no {key!r}; the index is damaged")
        kind = meta.get("compact", "none")
        try:
            compaction = None if kind == "none" else Compaction.parse(kind)
        except InputError as exc:
            conn.close()
            raise StoreError(f"{root / DB}: meta compact={kind!r} is not a representation this runtime knows") from exc
        return cls(root, conn, compaction, meta.get("originals", "kept") != "dropped")

    def close(self) -> None:
        if self._parts is not None:
            self._parts[0].close()
            self._parts[1].close()
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, str]:
        return self.catalog.meta

    @property
    def dim(self) -> int:
        return self.catalog.dim

    def check_bundle(self, identity: dict[str, str]) -> None:
        """Refuse a bundle other than the one that made this index's vectors."""
        check_identity(str(self.root), self.meta, identity, "use a new index")

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[Index]:
        """Exclusive writer lock; checks the index and removes what a killed writer left."""
        import fcntl

        try:
            lock = open(self.root / LOCK, "a+")  # noqa: SIM115 - held for the with-block below
        except OSError as exc:
            raise durable.os_error(self.root, exc, "taking the writer lock") from exc
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root}: another process is writing to this index") from None
            try:
                self.catalog.db(lambda: upkeep.recover(self.catalog, self.segments))
                self._locked = True
                yield self
            finally:
                self._locked = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _need_writer(self) -> None:
        if not self._locked:
            raise RuntimeError("index writes must happen inside `with index.writer():`")

    def page_state(self, path: str, page: int, content_hash: str) -> str:
        """``"same"`` (this page of this file is stored), ``"alias"`` (these bytes are stored under
        another path or version: reuse the rows) or ``"new"``."""

        def q() -> str:
            if self.catalog.stored_hash(path, page) == content_hash:
                return "same"
            return "alias" if self.catalog.holds_hash(content_hash) else "new"

        return self.catalog.db(q)

    def page_rows(self, path: str, page: int) -> tuple[np.ndarray, str] | None:
        """A stored page's fp16 rows [n, dim] (a copy) and content hash; None when the page is not
        stored or the index dropped its originals."""
        row = self.catalog.db(lambda: self.catalog.page_span(path, page))
        if row is None or row[1] is None or not self.keeps_originals:
            return None
        seg, file, nrows, start, count, digest = row
        return np.array(self.segments.fp16(seg, file, nrows, verify=True)[start : start + count]), digest

    def add_batch(self, records: Sequence[PageRecord]) -> int:
        """Commit ``records`` atomically (inside ``writer()``); returns the pages stored.

        The records of one path are that file's complete new set of pages: its pages stored
        before are replaced in the same commit. A record equal to what is stored is skipped."""
        self._need_writer()
        fresh: list[PageRecord] = []
        seen: set[tuple[bytes, int]] = set()
        for r in records:
            key = (encode_path(r.path), int(r.page))
            if key in seen or self.page_state(r.path, r.page, r.content_hash) == "same":
                continue
            seen.add(key)
            if r.embeddings is not None:
                e = r.embeddings
                if e.ndim != 2 or e.shape[1] != self.dim:
                    raise StoreError(f"{r.path}: embeddings {e.shape}, index dim {self.dim}")
                if not np.isfinite(e).all():
                    raise StoreError(f"{r.path} page {r.page}: the model produced non-finite values; not stored")
            fresh.append(r)
        if not fresh:
            return 0
        encoded = [r for r in fresh if r.embeddings is not None]
        counts: list[tuple[int, int]] = []  # per encoded record: (original rows, compact rows)
        new = None
        if encoded:
            # Pooling is per page and releases the GIL in numpy and scipy: one page per core.
            kind = self.compaction
            compact = parallel_map(lambda r: kind.encode(r.embeddings, r.layout), encoded) if kind else []
            counts = [(len(r.embeddings), len(compact[i]) if compact else 0) for i, r in enumerate(encoded)]
            originals = None
            if self.keeps_originals:
                originals = np.concatenate([r.embeddings for r in encoded]).astype(np.float16)
                if not np.isfinite(originals).all():
                    raise StoreError("embeddings overflow float16; not stored")
            new = self.segments.new(originals, sum(n for n, _ in counts), np.concatenate(compact) if compact else None)
        now = time.time()
        conn = self.conn

        def apply(seg_id: int | None) -> None:
            # Shared rows are looked up before this commit replaces anything: the bytes may be
            # an old version of a file this very batch updates.
            spans, start, cstart, k = [], 0, 0, 0
            for r in fresh:
                if r.embeddings is not None:
                    n, m = counts[k]
                    spans.append((seg_id, start, n, cstart, m))
                    start, cstart, k = start + n, cstart + m, k + 1
                else:
                    spans.append(self.catalog.span_of(r.content_hash))
            for path in {encode_path(r.path) for r in fresh}:  # replace what these files held
                conn.execute("DELETE FROM pages WHERE path = ?", (path,))
            for r, span in zip(fresh, spans, strict=True):
                conn.execute(
                    "INSERT INTO pages(path, page, content_hash, size, added, segment, row_start, row_count, "
                    "c_start, c_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (encode_path(r.path), r.page, r.content_hash, r.size, now, *span),
                )

        self.catalog.commit(new, self.segments, apply)
        return len(fresh)

    def remove(self, paths: Sequence[str | bytes]) -> int:
        """Forget every page of ``paths`` (inside ``writer()``); returns pages removed. Rows of
        segments that other pages still use stay as dead space until ``compact``."""
        self._need_writer()
        removed = [0]

        def apply(_seg_id: int | None) -> None:
            removed[0] = sum(
                self.conn.execute("DELETE FROM pages WHERE path = ?", (encode_path(p),)).rowcount for p in paths
            )

        self.catalog.commit(None, self.segments, apply)
        return removed[0]

    def missing_paths(self) -> list[str]:
        """Stored paths whose files no longer exist (for ``index remove --missing``)."""
        raw = self.catalog.db(lambda: [p for (p,) in self.conn.execute("SELECT DISTINCT path FROM pages")])
        return [decode_path(p) for p in raw if not os.path.lexists(p)]

    def compact(self) -> dict[str, int]:
        """Rewrite the live rows of segments that hold dead ones into one new segment (inside
        ``writer()``), crash-safe like ``add_batch``. Returns before/after row counts."""
        self._need_writer()
        return upkeep.compact(self.catalog, self.segments)

    # -- reading --------------------------------------------------------------------------

    def pages(self) -> list[dict[str, Any]]:
        sql = "SELECT id, path, page, content_hash, size, added, row_count FROM pages ORDER BY id"
        cur = self.catalog.db(lambda: self.conn.execute(sql).fetchall())
        keys = ("id", "path", "page", "content_hash", "size", "added", "rows")
        return [dict(zip(keys, (i, decode_path(p), *rest), strict=True)) for i, p, *rest in cur]

    def info(self) -> dict[str, Any]:
        def counts() -> tuple:
            with self.catalog.snapshot():  # one state: a concurrent commit cannot land between the counts
                return self.catalog.counts()

        n_pages, (live_rows, live_c, stored), (n_segs, all_rows), n_files = self.catalog.db(counts)
        files = list(self.segments.listing().values())
        sizes = {f.name: _size(f) for f in files}  # a writer may delete a retired segment meanwhile
        kind, dim = self.compaction, self.segments.dim
        # what a two-stage search holds: each compact vector's codes (Compaction.to_codes)
        in_ram = sum(n // kind.row_bytes(dim) * kind.ram_row_bytes(dim) for name, n in sizes.items()
                     if kind and name.endswith(kind.suffix))  # fmt: skip
        return {
            **self.meta,
            "files": n_files,
            "pages": n_pages,
            "shared_pages": n_pages - stored,  # pages whose rows another path's page also uses
            "rows": live_rows,
            "dead_rows": all_rows - live_rows,
            "segments": n_segs,
            "bytes": sum(sizes.values()),
            "compact_vectors": live_c,
            "compact_bytes_in_ram": in_ram,
            "scores": self._scores_note(),
        }

    def _scores_note(self) -> str:
        if self.compaction is None:
            return "exact MaxSim over the fp16 vectors"
        if not self.keeps_originals:
            return (f"MaxSim over the {self.compaction} compact vectors only (the originals were dropped): their "
                    "int8 codes pick candidates, the vectors themselves rank them")  # fmt: skip
        return (f"two-stage: MaxSim over the int8 codes of the {self.compaction} compact vectors picks candidates, "
                "exact MaxSim over the fp16 vectors ranks them (--exact: exact over all)")  # fmt: skip

    def search(
        self, queries: Sequence[np.ndarray], k: int = 10, rerank: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """MaxSim of each query [n_q, dim] against every page; top ``k`` per query.

        With a compact representation and without ``exact``: two stages, the compact vectors (in
        RAM) score every page, the ``rerank`` best (default ``DEFAULT_RERANK``, at least ``k``) are
        scored exactly on the fp16 vectors (memory-mapped). An index without its originals scores
        with the compact vectors alone; ``exact`` is then refused."""
        return self.scanner.search(queries, k, rerank, exact)

    def check(self) -> list[str]:
        """Every problem found (empty list = healthy); see ``upkeep.check``."""
        return upkeep.check(self.catalog, self.segments)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
