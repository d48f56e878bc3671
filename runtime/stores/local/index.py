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
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import mmap
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ...errors import InputError, StoreError
from ...scoring import score_packed
from ...workers import parallel_map
from ..base import Hit, PageRecord, bundle_identity, check_identity, decode_path, encode_path
from ..compact import Compaction

__all__ = ["Hit", "Index", "PageRecord", "bundle_identity", "check_identity", "decode_path", "encode_path"]

SCHEMA_VERSION = 3
DB = "index.sqlite"
SEGMENTS = "segments"
LOCK = "index.lock"
# A search verifies the sha256 of every segment it maps when the whole index is at most this big
# (~3,700 single-tile pages); larger ones rely on `index check` and the non-finite guard.
VERIFY_ON_OPEN_BYTES = 256 << 20

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT UNIQUE, rows INTEGER NOT NULL, sha256 TEXT,
    cfile TEXT UNIQUE, crows INTEGER NOT NULL DEFAULT 0, csha256 TEXT
);
CREATE TABLE intents (file TEXT PRIMARY KEY, since REAL NOT NULL);
CREATE TABLE pages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path BLOB NOT NULL,
    page INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    added REAL NOT NULL,
    segment INTEGER NOT NULL REFERENCES segments(id),
    row_start INTEGER NOT NULL,
    row_count INTEGER NOT NULL,
    c_start INTEGER NOT NULL DEFAULT 0,
    c_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (path, page)
);
CREATE INDEX pages_hash ON pages(content_hash);
CREATE INDEX pages_segment ON pages(segment);
"""
# A segment holds one commit's originals (``file``: fp16 rows, NULL when the index drops them) and,
# when the index has a compact representation, its compact vectors (``cfile``, runtime.stores.compact).
# A page's rows are [row_start, +row_count) of the one and [c_start, +c_count) of the other.
DEFAULT_RERANK = 100

T = TypeVar("T")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(root: Path, exc: OSError, doing: str) -> StoreError:
    if exc.errno == errno.ENOSPC:
        why = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied (read-only index directory?)"
    else:
        why = exc.strerror or str(exc)
    return StoreError(f"{root}: {doing} failed: {why}; nothing of it was committed, stored pages are intact")


def _db_error(root: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "full" in text:
        why = "no space left on device (database or disk is full)"
    elif "readonly" in text or "read-only" in text:
        why = "the index is read-only here"
    elif "locked" in text or "busy" in text:
        why = "another process holds the index database locked; try again"
    else:
        why = f"the index database is damaged or unreadable ({text}); run: python -m runtime index check --index DIR"
    return StoreError(f"{root / DB}: {why}")


def _will_need(arr: np.ndarray, start: int, count: int) -> None:
    """Tell the kernel rows ``start:start+count`` of a memory-mapped segment are about to be read,
    so the rerank's ~100 scattered pages are fetched together (on a cold page cache, page faults
    one after another took 0.1-0.5 s over 100 pages here)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not count:
        return
    row = arr.shape[1] * arr.itemsize
    lo = (start * row) // mmap.PAGESIZE * mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_WILLNEED, lo, (start + count) * row - lo)


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


class Index:
    """The local ``Store``: open with ``Index.open(dir)`` (existing) or ``Index.create(dir, identity)``."""

    shares_rows = True

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._verified: set[tuple[int, str]] = set()
        self._plans: dict[bool, _SearchPlan] = {}  # two_stage -> the last search's plan
        self._locked = False
        self.compaction: Compaction | None = None  # read from meta by open()
        self.keeps_originals = True

    # -- opening --------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        # DELETE journal + FULL sync: a commit is on disk when it returns (WAL would be faster
        # but adds files that must travel with the index).
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

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
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.creating-", dir=root.parent))
        except OSError as exc:
            raise _os_error(root, exc, "creating the index") from exc
        try:
            (tmp / SEGMENTS).mkdir()
            conn = cls._connect(tmp / DB)
            try:
                with _transaction(conn):
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    rows = {"schema_version": str(SCHEMA_VERSION), "created": _now_iso(), **identity,
                            "compact": str(kind) if kind else "none",
                            "originals": "kept" if keep_originals else "dropped"}  # fmt: skip
                    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(rows.items()))
            finally:
                conn.close()
            _fsync_dir(tmp / SEGMENTS)
            _fsync_dir(tmp)
            if root.is_dir():
                root.rmdir()  # empty (checked above); rename cannot replace a non-empty one anyway
            os.rename(tmp, root)
            _fsync_dir(root.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                _rmtree(tmp)
            if root.is_dir() and (root / DB).exists():  # another process created it meanwhile
                raise StoreError(
                    f"{root}: an index was created here by another process; run the command again"
                ) from exc
            raise _os_error(root, exc, "creating the index") from exc
        except sqlite3.Error as exc:
            _rmtree(tmp)
            raise _db_error(root, exc) from exc
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
            conn = cls._connect(root / DB)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{root / DB}: not a readable index database ({exc})") from exc
        index = cls(root, conn)
        version = meta.get("schema_version")
        if version in ("1", "2"):
            index._migrate(int(version))
        elif version != str(SCHEMA_VERSION):
            conn.close()
            raise StoreError(f"{root}: index schema {version!r}, this runtime reads {SCHEMA_VERSION}")
        for key in ("dim", "precision", "bundle_manifest_sha256"):
            if key not in meta:
                conn.close()
                raise StoreError(f"{root / DB}: meta has no {key!r}; the index is damaged")
        kind = meta.get("compact", "none")
        try:
            index.compaction = None if kind == "none" else Compaction.parse(kind)
        except InputError as exc:
            conn.close()
            raise StoreError(f"{root / DB}: meta compact={kind!r} is not a representation this runtime knows") from exc
        index.keeps_originals = meta.get("originals", "kept") != "dropped"
        return index

    def _migrate(self, version: int) -> None:
        """Schema 1 (paths as text, one page per content hash, reusable segment ids) or 2 (no
        compact vectors) -> 3, in one transaction. Files are untouched; segment ids continue
        above the old maximum."""
        path = "CAST(path AS BLOB)" if version == 1 else "path"
        try:
            with _transaction(self.conn):
                c = self.conn
                c.execute("ALTER TABLE segments RENAME TO segments_old")
                c.execute("ALTER TABLE pages RENAME TO pages_old")
                for index in ("pages_path", "pages_hash", "pages_segment"):
                    c.execute(f"DROP INDEX IF EXISTS {index}")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    if "TABLE meta" not in statement and not (version == 2 and "TABLE intents" in statement):
                        c.execute(statement)
                c.execute("INSERT INTO segments(id, file, rows, sha256) "
                          "SELECT id, file, rows, sha256 FROM segments_old")  # fmt: skip
                c.execute(
                    "INSERT INTO pages(path, page, content_hash, size, added, segment, row_start, row_count) "
                    f"SELECT {path}, page, content_hash, size, added, segment, row_start, row_count "
                    "FROM pages_old ORDER BY id"
                )
                c.execute("DROP TABLE pages_old")
                c.execute("DROP TABLE segments_old")
                c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                c.executemany("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                              [("compact", "none"), ("originals", "kept")])  # fmt: skip
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.root}: index schema {version} needs a one-time upgrade, which failed ({exc}); "
                "run the command again with write access to the index"
            ) from exc

    def close(self) -> None:
        self._maps.clear()
        self._plans.clear()
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, turning SQLite's errors into one-line ``StoreError``s."""
        try:
            return fn()
        except sqlite3.Error as exc:
            raise _db_error(self.root, exc) from exc

    @property
    def meta(self) -> dict[str, str]:
        return self._db(lambda: dict(self.conn.execute("SELECT key, value FROM meta").fetchall()))

    @functools.cached_property
    def dim(self) -> int:
        return int(self.meta["dim"])  # fixed at creation; read once (the candidate stage asks per block)

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
            raise _os_error(self.root, exc, "taking the writer lock") from exc
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root}: another process is writing to this index") from None
            try:
                self._db(self._recover)
                self._locked = True
                yield self
            finally:
                self._locked = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _need_writer(self) -> None:
        if not self._locked:
            raise RuntimeError("index writes must happen inside `with index.writer():`")

    def _recover(self) -> None:
        """Prove the database whole, then delete exactly what an interrupted writer left."""
        problems = self._integrity()
        known = self._segment_files()
        doomed = {f for (f,) in self.conn.execute("SELECT file FROM intents")}
        on_disk = {f.name: f for f in (self.root / SEGMENTS).iterdir()}
        for name, (size, _) in known.items():
            f = on_disk.get(name)
            if f is None or f.stat().st_size != size:
                problems.append(f"segment {name} is missing or has the wrong size")
        strays = [n for n in on_disk if n not in known and n not in doomed and not n.startswith(".tmp-")]
        if strays:
            problems.append(f"{len(strays)} file(s) in {SEGMENTS}/ that the database does not know (e.g. {strays[0]})")
        if problems:
            raise StoreError(
                f"{self.root}: the index is damaged ({problems[0]}{'; ...' if len(problems) > 1 else ''}); "
                "nothing was changed or deleted. See: python -m runtime index check --index DIR"
            )
        for name, f in on_disk.items():
            if name.startswith(".tmp-") or (name in doomed and name not in known):
                f.unlink()
        if doomed:
            with _transaction(self.conn):
                self.conn.executemany("DELETE FROM intents WHERE file = ?", [(f,) for f in doomed])

    def _segment_files(self) -> dict[str, tuple[int, str]]:
        """Every file the segments table references (full scan, no index): name -> (bytes, sha256)."""
        out = {}
        row_bytes = self.compaction.row_bytes(self.dim) if self.compaction else 0
        for file, rows, sha, cfile, crows, csha in self.conn.execute(
            "SELECT file, rows, sha256, cfile, crows, csha256 FROM segments NOT INDEXED"
        ):
            if file is not None:
                out[file] = (rows * self.dim * 2, sha)
            if cfile is not None:
                out[cfile] = (crows * row_bytes, csha)
        return out

    def _integrity(self) -> list[str]:
        rows = [r for (r,) in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else [f"SQLite integrity check: {r}" for r in rows]

    def page_state(self, path: str, page: int, content_hash: str) -> str:
        """``"same"`` (this page of this file is stored), ``"alias"`` (these bytes are stored under
        another path or version: reuse the rows) or ``"new"``."""

        def q() -> str:
            row = self.conn.execute(
                "SELECT content_hash FROM pages WHERE path = ? AND page = ?", (encode_path(path), page)
            ).fetchone()
            if row is not None and row[0] == content_hash:
                return "same"
            hit = self.conn.execute("SELECT 1 FROM pages WHERE content_hash = ? LIMIT 1", (content_hash,)).fetchone()
            return "alias" if hit else "new"

        return self._db(q)

    def page_rows(self, path: str, page: int) -> tuple[np.ndarray, str] | None:
        """A stored page's fp16 rows [n, dim] (a copy) and content hash; None when the page is not
        stored or the index dropped its originals."""

        def q() -> tuple | None:
            return self.conn.execute(
                "SELECT p.segment, s.file, s.rows, p.row_start, p.row_count, p.content_hash FROM pages p "
                "JOIN segments s ON s.id = p.segment WHERE p.path = ? AND p.page = ?",
                (encode_path(path), page),
            ).fetchone()

        row = self._db(q)
        if row is None or row[1] is None or not self.keeps_originals:
            return None
        seg, file, nrows, start, count, digest = row
        return np.array(self._segment(seg, file, nrows, verify=True)[start : start + count]), digest

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
        files: dict[str, tuple[str, bytes, int]] = {}  # column -> (file name, bytes, rows)
        counts: list[tuple[int, int]] = []  # per encoded record: (original rows, compact rows)
        if encoded:
            # Pooling is per page and releases the GIL in numpy and scipy: one page per core.
            kind = self.compaction
            compact = parallel_map(lambda r: kind.encode(r.embeddings, r.layout), encoded) if kind else []
            counts = [(len(r.embeddings), len(compact[i]) if compact else 0) for i, r in enumerate(encoded)]
            if self.keeps_originals:
                rows = np.concatenate([r.embeddings for r in encoded]).astype(np.float16)
                if not np.isfinite(rows).all():
                    raise StoreError("embeddings overflow float16; not stored")
                files["file"] = (f"{uuid.uuid4().hex}.f16", rows.tobytes(), len(rows))
            if compact:
                packed = np.concatenate(compact)
                files["cfile"] = (f"{uuid.uuid4().hex}{self.compaction.suffix}", packed.tobytes(), len(packed))
            self._db(lambda: self._intend([f for f, _, _ in files.values()]))
            for name, data, _ in files.values():
                self._write_segment(name, data)
        now = time.time()

        def commit() -> None:
            with _transaction(self.conn):
                seg_id = None
                if encoded:
                    orig, comp = files.get("file"), files.get("cfile")
                    cur = self.conn.execute(
                        "INSERT INTO segments(file, rows, sha256, cfile, crows, csha256) VALUES (?, ?, ?, ?, ?, ?)",
                        (orig[0] if orig else None, orig[2] if orig else sum(c[0] for c in counts),
                         hashlib.sha256(orig[1]).hexdigest() if orig else None, comp[0] if comp else None,
                         comp[2] if comp else 0, hashlib.sha256(comp[1]).hexdigest() if comp else None),
                    )  # fmt: skip
                    seg_id = cur.lastrowid
                    self.conn.executemany("DELETE FROM intents WHERE file = ?", [(f,) for f, _, _ in files.values()])
                # Shared rows are looked up before this commit replaces anything: the bytes may be
                # an old version of a file this very batch updates.
                spans, start, cstart, k = [], 0, 0, 0
                for r in fresh:
                    if r.embeddings is not None:
                        n, m = counts[k]
                        spans.append((seg_id, start, n, cstart, m))
                        start, cstart, k = start + n, cstart + m, k + 1
                    else:
                        spans.append(self._span_of(r.content_hash))
                for path in {encode_path(r.path) for r in fresh}:  # replace what these files held
                    self.conn.execute("DELETE FROM pages WHERE path = ?", (path,))
                for r, span in zip(fresh, spans, strict=True):
                    self.conn.execute(
                        "INSERT INTO pages(path, page, content_hash, size, added, segment, row_start, row_count, "
                        "c_start, c_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (encode_path(r.path), r.page, r.content_hash, r.size, now, *span),
                    )
                self._doom_unreferenced()

        self._db(commit)
        self._delete_doomed()
        return len(fresh)

    def _span_of(self, content_hash: str) -> tuple[int, int, int, int, int]:
        row = self.conn.execute(
            "SELECT segment, row_start, row_count, c_start, c_count FROM pages WHERE content_hash = ? LIMIT 1",
            (content_hash,),
        ).fetchone()
        if row is None:  # removed by another writer since page_state said "alias": cannot happen under writer()
            raise StoreError(f"no stored page holds content {content_hash[:12]}...; add the file again")
        return row

    def _intend(self, files: list[str]) -> None:
        with _transaction(self.conn):
            self.conn.executemany("INSERT OR IGNORE INTO intents(file, since) VALUES (?, ?)",
                                  [(f, time.time()) for f in files])  # fmt: skip

    def _write_segment(self, name: str, data: bytes) -> None:
        seg_dir = self.root / SEGMENTS
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=seg_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, seg_dir / name)
            tmp = None
            _fsync_dir(seg_dir)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise _os_error(self.root, exc, "writing a segment") from exc

    def _doom_unreferenced(self) -> None:
        """Inside a transaction: segments no page uses any more become intents (deleted after commit)."""
        dead = self.conn.execute(
            "SELECT id, file, cfile FROM segments WHERE id NOT IN (SELECT DISTINCT segment FROM pages)"
        ).fetchall()
        for seg_id, *names in dead:
            for file in filter(None, names):
                self.conn.execute("INSERT OR IGNORE INTO intents(file, since) VALUES (?, ?)", (file, time.time()))
            self.conn.execute("DELETE FROM segments WHERE id = ?", (seg_id,))

    def _delete_doomed(self) -> None:
        """After a commit: delete the files it doomed, then forget them. A crash in between leaves
        intents that the next writer's ``_recover`` completes."""
        doomed = self._db(lambda: [f for (f,) in self.conn.execute(
            "SELECT file FROM intents WHERE file NOT IN (SELECT file FROM segments WHERE file IS NOT NULL) "
            "AND file NOT IN (SELECT cfile FROM segments WHERE cfile IS NOT NULL)")])  # fmt: skip
        for f in doomed:
            with contextlib.suppress(FileNotFoundError):
                (self.root / SEGMENTS / f).unlink()
        if doomed:

            def forget() -> None:
                with _transaction(self.conn):
                    self.conn.executemany("DELETE FROM intents WHERE file = ?", [(f,) for f in doomed])

            self._db(forget)

    def remove(self, paths: Sequence[str | bytes]) -> int:
        """Forget every page of ``paths`` (inside ``writer()``); returns pages removed. Rows of
        segments that other pages still use stay as dead space until ``compact``."""
        self._need_writer()

        def tx() -> int:
            with _transaction(self.conn):
                n = sum(
                    self.conn.execute("DELETE FROM pages WHERE path = ?", (encode_path(p),)).rowcount for p in paths
                )
                self._doom_unreferenced()
            return n

        n = self._db(tx)
        self._delete_doomed()
        return n

    def missing_paths(self) -> list[str]:
        """Stored paths whose files no longer exist (for ``index remove --missing``)."""
        raw = self._db(lambda: [p for (p,) in self.conn.execute("SELECT DISTINCT path FROM pages")])
        return [decode_path(p) for p in raw if not os.path.lexists(p)]

    def compact(self) -> dict[str, int]:
        """Rewrite the live rows of segments that hold dead ones into one new segment (inside
        ``writer()``), crash-safe like ``add_batch``. Returns before/after row counts."""
        self._need_writer()

        def plan() -> tuple[list[tuple], list[tuple]]:
            segs = self.conn.execute("SELECT id, file, rows, cfile, crows FROM segments").fetchall()
            spans = self.conn.execute(
                "SELECT DISTINCT segment, row_start, row_count, c_start, c_count FROM pages ORDER BY segment, row_start"
            ).fetchall()
            return segs, spans

        segs, spans = self._db(plan)
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
                parts.append(np.asarray(self._segment(seg, file, rows, verify=True)[start : start + count]))
            if cfile is not None:
                cparts.append(self._compact_data(seg, cfile, crows, verify=True)[cstart : cstart + ccount])
            new_span[span] = (cursor, ccursor)
            cursor, ccursor = cursor + count, ccursor + ccount
        files: dict[str, tuple[str, bytes]] = {}
        if parts:
            files["file"] = (f"{uuid.uuid4().hex}.f16", np.concatenate(parts).astype(np.float16).tobytes())
        if cparts:
            files["cfile"] = (f"{uuid.uuid4().hex}{self.compaction.suffix}", np.concatenate(cparts).tobytes())
        if files:
            self._db(lambda: self._intend([f for f, _ in files.values()]))
            for name, data in files.values():
                self._write_segment(name, data)

        def commit() -> None:
            with _transaction(self.conn):
                new_id = None
                if new_span:
                    orig, comp = files.get("file"), files.get("cfile")
                    new_id = self.conn.execute(
                        "INSERT INTO segments(file, rows, sha256, cfile, crows, csha256) VALUES (?, ?, ?, ?, ?, ?)",
                        (orig[0] if orig else None, cursor, hashlib.sha256(orig[1]).hexdigest() if orig else None,
                         comp[0] if comp else None, ccursor, hashlib.sha256(comp[1]).hexdigest() if comp else None),
                    ).lastrowid  # fmt: skip
                    self.conn.executemany("DELETE FROM intents WHERE file = ?", [(f,) for f, _ in files.values()])
                for (seg, start, count, cstart, ccount), (new_start, new_cstart) in new_span.items():
                    self.conn.execute(
                        "UPDATE pages SET segment = ?, row_start = ?, c_start = ? "
                        "WHERE segment = ? AND row_start = ? AND row_count = ? AND c_start = ? AND c_count = ?",
                        (new_id, new_start, new_cstart, seg, start, count, cstart, ccount),
                    )
                self._doom_unreferenced()

        self._db(commit)
        self._delete_doomed()
        after = self._db(lambda: self.conn.execute("SELECT COALESCE(SUM(rows), 0) FROM segments").fetchone()[0])
        return {"rows_before": before, "rows_after": int(after), "segments_rewritten": len(sparse)}

    # -- reading --------------------------------------------------------------------------

    def _segment(self, seg_id: int, file: str, rows: int, verify: bool = False) -> np.ndarray:
        key = (seg_id, file)
        arr = self._maps.get(key)
        if arr is None:
            path = self.root / SEGMENTS / file
            expected = rows * self.dim * 2
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            if size != expected:
                raise StoreError(f"{path}: missing or wrong size (expected {expected} bytes); the index is damaged")
            arr = (
                np.memmap(path, dtype=np.float16, mode="r", shape=(rows, self.dim))
                if rows
                else np.zeros((0, self.dim), np.float16)
            )
            self._maps[key] = arr
        if verify and key not in self._verified:
            self._verify(seg_id, file, arr)
        return arr

    def _compact_data(self, seg_id: int, cfile: str, crows: int, verify: bool = False) -> np.ndarray:
        """A segment's compact vectors, read into RAM once per process: [crows, row_bytes] uint8."""
        key = (seg_id, cfile)
        data = self._maps.get(key)
        if data is None:
            path = self.root / SEGMENTS / cfile
            width = self.compaction.row_bytes(self.dim)
            try:
                data = np.fromfile(path, dtype=np.uint8)
            except OSError:
                data = np.zeros(0, np.uint8)
            if data.size != crows * width:
                raise StoreError(
                    f"{path}: missing or wrong size (expected {crows * width} bytes); the index is damaged"
                )
            data = data.reshape(crows, width)
            self._maps[key] = data
        if verify and key not in self._verified:
            self._verify(seg_id, cfile, data, "csha256")
        return data

    def _verify(self, seg_id: int, file: str, arr: np.ndarray, column: str = "sha256") -> None:
        sql = f"SELECT {column} FROM segments WHERE id = ?"
        (digest,) = self._db(lambda: self.conn.execute(sql, (seg_id,)).fetchone())
        if hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest() != digest:
            raise StoreError(
                f"{self.root / SEGMENTS / file}: contents do not match the checksum recorded at commit; "
                "the index is damaged. See: python -m runtime index check --index DIR"
            )
        self._verified.add((seg_id, file))

    def pages(self) -> list[dict[str, Any]]:
        sql = "SELECT id, path, page, content_hash, size, added, row_count FROM pages ORDER BY id"
        cur = self._db(lambda: self.conn.execute(sql).fetchall())
        keys = ("id", "path", "page", "content_hash", "size", "added", "rows")
        return [dict(zip(keys, (i, decode_path(p), *rest), strict=True)) for i, p, *rest in cur]

    def info(self) -> dict[str, Any]:
        def q() -> tuple:
            c = self.conn
            n_pages = c.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
            live = c.execute(
                "SELECT COALESCE(SUM(row_count), 0), COALESCE(SUM(c_count), 0), COUNT(*) FROM "
                "(SELECT DISTINCT segment, row_start, row_count, c_start, c_count FROM pages)"
            ).fetchone()
            segs = c.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM segments").fetchone()
            paths = c.execute("SELECT COUNT(DISTINCT path) FROM pages").fetchone()[0]
            return n_pages, live, segs, paths

        n_pages, (live_rows, live_c, stored), (n_segs, all_rows), n_files = self._db(q)
        files = list((self.root / SEGMENTS).iterdir())
        kind = self.compaction
        return {
            **self.meta,
            "files": n_files,
            "pages": n_pages,
            "shared_pages": n_pages - stored,  # pages whose rows another path's page also uses
            "rows": live_rows,
            "dead_rows": all_rows - live_rows,
            "segments": n_segs,
            "bytes": sum(f.stat().st_size for f in files),
            "compact_vectors": live_c,
            "compact_bytes_in_ram": sum(f.stat().st_size for f in files if kind and f.name.endswith(kind.suffix)),
            "scores": self._scores_note(),
        }

    def _scores_note(self) -> str:
        if self.compaction is None:
            return "exact MaxSim over the fp16 vectors"
        if not self.keeps_originals:
            return f"MaxSim over the {self.compaction} compact vectors only (the originals were dropped)"
        return (f"two-stage: MaxSim over the {self.compaction} compact vectors picks candidates, exact MaxSim over "
                "the fp16 vectors ranks them (--exact: exact over all)")  # fmt: skip

    def search(
        self, queries: Sequence[np.ndarray], k: int = 10, rerank: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """MaxSim of each query [n_q, dim] against every page; top ``k`` per query.

        With a compact representation and without ``exact``: two stages, the compact vectors (in
        RAM) score every page, the ``rerank`` best (default ``DEFAULT_RERANK``, at least ``k``) are
        scored exactly on the fp16 vectors (memory-mapped). An index without its originals scores
        with the compact vectors alone; ``exact`` is then refused."""
        if k < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        if rerank is not None and rerank < 1:
            raise StoreError(f"--rerank must be at least 1, got {rerank}")
        two_stage = self.compaction is not None and not exact
        if exact and not self.keeps_originals:
            raise StoreError(f"{self.root}: this index dropped its original vectors; exact search is not possible")

        plan = self._search_plan(two_stage)
        rows = plan.rows
        if not rows:
            return [[] for _ in queries]
        if not two_stage:
            scores = self._score_all(queries, plan, compact=False)
            return [self._top(row, k, rows) for row in scores]
        candidate = self._score_all(queries, plan, compact=True)
        if not self.keeps_originals:
            return [self._top(row, k, rows) for row in candidate]
        n = min(len(rows), max(k, rerank or DEFAULT_RERANK))
        out = []
        for q, row in zip(queries, candidate, strict=True):
            picks = np.argpartition(-row, n - 1)[:n]
            spans = [(rows[i][0], rows[i][3], rows[i][4]) for i in picks]
            for seg, a, c in spans:  # ask for every span at once: one page fault after another is slow I/O
                _will_need(plan.maps[seg], a, c)
            exact_rows = np.concatenate([plan.maps[seg][a : a + c] for seg, a, c in spans])
            offsets = np.concatenate([[0], np.cumsum([c for _, _, c in spans])])
            s = score_packed([q], exact_rows, offsets)[0]
            if not np.isfinite(s).all():
                raise StoreError(f"{self.root}: non-finite scores in the exact stage; run index check")
            full = np.full(len(rows), -np.inf, np.float32)
            full[picks] = s
            out.append(self._top(full, min(k, n), rows))
        return out

    def _search_plan(self, two_stage: bool) -> _SearchPlan:
        """The page table, mapped files and per-segment spans a search scores; built once and
        reused while no connection has committed (SQLite's data_version and this connection's
        change count): at 100k pages reading and grouping the table costs more than the
        candidate stage itself."""

        def version() -> tuple[int, int]:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0]), self.conn.total_changes

        key = (*self._db(version), two_stage)
        cached = self._plans.get(two_stage)
        if cached is not None and cached.key == key:
            return cached

        def snapshot() -> tuple[list[tuple], dict[int, Any], dict[int, Any], bool]:
            # One read transaction: a writer cannot commit (and so cannot delete a segment this
            # reads) until the files are mapped or read; a mapped file stays readable after deletion.
            self.conn.execute("BEGIN")
            try:
                rows = self.conn.execute(
                    "SELECT p.segment, s.file, s.rows, p.row_start, p.row_count, p.path, p.page, s.cfile, s.crows, "
                    "p.c_start, p.c_count FROM pages p JOIN segments s ON s.id = p.segment "
                    "ORDER BY p.segment, p.row_start, p.id"
                ).fetchall()
                total = sum(size for size, _ in self._segment_files().values())
                verify = total <= VERIFY_ON_OPEN_BYTES
                maps, cdata = {}, {}
                for seg, file, nrows, *_rest in rows:
                    cfile, crows = _rest[4], _rest[5]
                    if seg in maps or seg in cdata:
                        continue
                    if file is not None and self.keeps_originals:
                        maps[seg] = self._segment(seg, file, nrows, verify=verify)
                    if two_stage:
                        cdata[seg] = self._compact_data(seg, cfile, crows, verify=verify)
            finally:
                self.conn.execute("COMMIT")
            return rows, maps, cdata, verify

        rows, maps, cdata, verified = self._db(snapshot)
        for old in [old for old in self._maps if old[0] not in maps and old[0] not in cdata]:
            del self._maps[old]  # compacted or removed since the last search: never used again
            self._verified.discard(old)
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
        fp16_view = compact and self.compaction.is_fp16
        decode = self._decode if compact and not fp16_view else None
        for g in plan.groups[compact]:
            arr = arrays[g.seg]
            if fp16_view:
                arr = self.compaction.to_float(arr, self.dim)
            offsets = g.offsets
            if g.contiguous:  # score in place
                lo = int(g.starts[0])
                s = score_packed(queries, arr[lo : lo + int(offsets[-1])], offsets, decode=decode)
            else:
                packed = np.concatenate([arr[a : a + c] for a, c in zip(g.starts, g.counts, strict=True)])
                s = score_packed(queries, packed, offsets, decode=decode)
            if not np.isfinite(s).all():
                if not plan.verified:  # raises when the file was damaged
                    self._verify(g.seg, g.file, arr, "csha256" if compact else "sha256")
                raise StoreError(f"{self.root / SEGMENTS / g.file}: non-finite scores; the index is damaged")
            scores[:, g.idx] = s
        return scores

    def _decode(self, data: np.ndarray) -> np.ndarray:
        return self.compaction.to_float(data, self.dim)

    @staticmethod
    def _top(row: np.ndarray, k: int, rows: list[tuple]) -> list[Hit]:
        kk = min(k, len(row))
        top = np.argpartition(-row, kk - 1)[:kk]
        top = top[np.lexsort((top, -row[top]))]  # by score, ties by storage order
        return [Hit(r + 1, float(row[i]), decode_path(rows[i][5]), rows[i][6]) for r, i in enumerate(top)]

    def check(self) -> list[str]:
        """Every problem found (empty list = healthy): SQLite's integrity check, each segment's
        files, sizes and sha256, page spans inside their segment and overlapping only when
        shared, files the database does not know, and interrupted writes not yet cleaned up."""

        def q() -> list[str]:
            problems = self._integrity()
            known = self._segment_files()
            for name, (size, digest) in sorted(known.items()):
                path = self.root / SEGMENTS / name
                if not path.is_file():
                    problems.append(f"segment {name} missing")
                    continue
                data = path.read_bytes()
                if len(data) != size:
                    problems.append(f"segment {name}: {len(data)} bytes, expected {size}")
                elif hashlib.sha256(data).hexdigest() != digest:
                    problems.append(f"segment {name}: sha256 mismatch (contents changed since commit)")
            segs = self.conn.execute("SELECT id, file, rows, cfile, crows FROM segments NOT INDEXED").fetchall()
            for seg_id, file, rows, cfile, crows in segs:
                for label, col_a, col_c, limit in ((file, "row_start", "row_count", rows),
                                                   (cfile, "c_start", "c_count", crows)):  # fmt: skip
                    if label is None:
                        continue
                    spans = self.conn.execute(
                        f"SELECT DISTINCT {col_a}, {col_c} FROM pages WHERE segment = ? ORDER BY {col_a}", (seg_id,)
                    ).fetchall()
                    end = 0
                    for start, count in spans:
                        if start < end or start + count > limit or count <= 0:
                            problems.append(f"segment {label}: bad page span {start}+{count}")
                        end = max(end, start + count)
            orphans = self.conn.execute("SELECT COUNT(*) FROM pages WHERE segment NOT IN (SELECT id FROM segments)")
            if (n := orphans.fetchone()[0]) > 0:
                problems.append(f"{n} page(s) point at segments that do not exist")
            doomed = {f for (f,) in self.conn.execute("SELECT file FROM intents")}
            for f in sorted((self.root / SEGMENTS).iterdir()):
                if f.name not in known and f.name not in doomed and not f.name.startswith(".tmp-"):
                    problems.append(f"file {SEGMENTS}/{f.name} is not in the database")
            return problems

        return self._db(q)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # A failed ROLLBACK (disk full, I/O error) must not hide the error that caused it; SQLite
        # rolls back a hot journal the next time the database is opened.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
