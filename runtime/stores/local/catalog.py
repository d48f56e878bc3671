"""The local index's SQLite catalog: schema and migration, the queries every other part asks,
and the one commit protocol.

Tables: ``meta`` (bundle identity, dim, compact kind), ``segments`` (one row per commit's files,
with their sha256), ``pages`` ((path bytes, page) -> a span of a segment), ``intents`` (segment
files about to be written, or doomed and about to be deleted).

The commit protocol (``Catalog.commit``), shared by add, remove and compact: the new files' names
go into ``intents`` first; the files are written (``SegmentFiles.write``); then one transaction
records the segment, drops its intents, applies the caller's page changes and turns every segment
no page uses any more into intents; after it, the doomed files are deleted and forgotten. A crash
at any point leaves either the old state or the new one plus files that ``intents`` names, which
the next writer deletes (``upkeep.recover``)."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from ...errors import StoreError
from ..base import encode_path
from . import durable
from .segments import NewSegment, SegmentFiles

__all__ = ["SCHEMA_VERSION", "Catalog", "connect", "init_schema"]

SCHEMA_VERSION = 3
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

T = TypeVar("T")
Span = tuple[int, int, int, int, int]  # (segment, row_start, row_count, c_start, c_count)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    # DELETE journal + FULL sync: a commit is on disk when it returns (WAL would be faster
    # but adds files that must travel with the index).
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def init_schema(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    """A new database's tables and ``meta`` rows, in one transaction."""
    with durable.transaction(conn):
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(meta.items()))


class Catalog:
    """The catalog of the index at ``root`` over its open connection ``conn``."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn

    def db(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, turning SQLite's errors into one-line ``StoreError``s."""
        try:
            return fn()
        except sqlite3.Error as exc:
            raise durable.db_error(self.root, exc) from exc

    # -- meta -----------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, str]:
        return self.db(lambda: dict(self.conn.execute("SELECT key, value FROM meta").fetchall()))

    @functools.cached_property
    def dim(self) -> int:
        return int(self.meta["dim"])  # fixed at creation; read once (the candidate stage asks per block)

    def migrate(self, version: int) -> None:
        """Schema 1 (paths as text, one page per content hash, reusable segment ids) or 2 (no
        compact vectors) -> 3, in one transaction. Files are untouched; segment ids continue
        above the old maximum."""
        path = "CAST(path AS BLOB)" if version == 1 else "path"
        try:
            with durable.transaction(self.conn):
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

    # -- reads (callers wrap them in ``db``) ----------------------------------------------

    def integrity(self) -> list[str]:
        rows = [r for (r,) in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else [f"SQLite integrity check: {r}" for r in rows]

    def segment_rows(self) -> list[tuple]:
        """Every segment's (file, rows, sha256, cfile, crows, csha256), by a full scan (no index)."""
        return self.conn.execute(
            "SELECT file, rows, sha256, cfile, crows, csha256 FROM segments NOT INDEXED"
        ).fetchall()

    def names_file(self, name: str) -> bool:
        """Whether a segment row names ``name`` (as its fp16 or its compact file)."""
        sql = "SELECT 1 FROM segments WHERE file = ? OR cfile = ? LIMIT 1"
        return self.conn.execute(sql, (name, name)).fetchone() is not None

    def intents(self) -> set[str]:
        return {f for (f,) in self.conn.execute("SELECT file FROM intents")}

    def digest(self, seg_id: int, column: str) -> str | None:
        """The sha256 (``sha256``) or compact sha256 (``csha256``) recorded for a segment."""
        if column not in ("sha256", "csha256"):
            raise ValueError(column)
        sql = f"SELECT {column} FROM segments WHERE id = ?"
        row = self.db(lambda: self.conn.execute(sql, (seg_id,)).fetchone())
        return row[0] if row else None

    def version(self) -> tuple[int, int]:
        """Changes since: SQLite's data_version (other connections' commits) and this connection's."""
        return self.db(lambda: (int(self.conn.execute("PRAGMA data_version").fetchone()[0]), self.conn.total_changes))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: no writer can commit (and so delete a segment) until it ends."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def plan_rows(self) -> list[tuple]:
        """Every page as (segment, file, rows, row_start, row_count, path, page, cfile, crows,
        c_start, c_count), in storage order."""
        return self.conn.execute(
            "SELECT p.segment, s.file, s.rows, p.row_start, p.row_count, p.path, p.page, s.cfile, s.crows, "
            "p.c_start, p.c_count FROM pages p JOIN segments s ON s.id = p.segment "
            "ORDER BY p.segment, p.row_start, p.id"
        ).fetchall()

    def stored_hash(self, path: str | bytes, page: int) -> str | None:
        row = self.conn.execute(
            "SELECT content_hash FROM pages WHERE path = ? AND page = ?", (encode_path(path), page)
        ).fetchone()
        return row[0] if row else None

    def holds_hash(self, content_hash: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM pages WHERE content_hash = ? LIMIT 1", (content_hash,)).fetchone()
            is not None
        )

    def page_span(self, path: str | bytes, page: int) -> tuple | None:
        """(segment, file, rows, row_start, row_count, content_hash) of one stored page."""
        return self.conn.execute(
            "SELECT p.segment, s.file, s.rows, p.row_start, p.row_count, p.content_hash FROM pages p "
            "JOIN segments s ON s.id = p.segment WHERE p.path = ? AND p.page = ?",
            (encode_path(path), page),
        ).fetchone()

    def span_of(self, content_hash: str) -> Span:
        """The stored rows of a page with these bytes (for a page that shares them)."""
        row = self.conn.execute(
            "SELECT segment, row_start, row_count, c_start, c_count FROM pages WHERE content_hash = ? LIMIT 1",
            (content_hash,),
        ).fetchone()
        if row is None:  # removed by another writer since page_state said "alias": cannot happen under writer()
            raise StoreError(f"no stored page holds content {content_hash[:12]}...; add the file again")
        return row

    def counts(self) -> tuple:
        """(pages, (live rows, live compact vectors, distinct spans), (segments, all rows), files)."""
        c = self.conn
        n_pages = c.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
        live = c.execute(
            "SELECT COALESCE(SUM(row_count), 0), COALESCE(SUM(c_count), 0), COUNT(*) FROM "
            "(SELECT DISTINCT segment, row_start, row_count, c_start, c_count FROM pages)"
        ).fetchone()
        segs = c.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM segments").fetchone()
        paths = c.execute("SELECT COUNT(DISTINCT path) FROM pages").fetchone()[0]
        return n_pages, live, segs, paths

    def live_spans(self) -> list[Span]:
        """Every distinct span pages use, by segment and row."""
        return self.conn.execute(
            "SELECT DISTINCT segment, row_start, row_count, c_start, c_count FROM pages ORDER BY segment, row_start"
        ).fetchall()

    # -- the commit protocol --------------------------------------------------------------

    def intend(self, files: Sequence[str]) -> None:
        with durable.transaction(self.conn):
            self.conn.executemany("INSERT OR IGNORE INTO intents(file, since) VALUES (?, ?)",
                                  [(f, time.time()) for f in files])  # fmt: skip

    def commit(self, new: NewSegment | None, segments: SegmentFiles, apply: Callable[[int | None], None]) -> None:
        """The one way anything changes (see the module's docstring): ``new``'s files, if any, are
        intended and written, then one transaction records them and runs ``apply(segment id or
        None)``, the caller's page changes, and dooms what no page uses; then the doomed files go."""
        if new is not None:
            self.db(lambda: self.intend(new.names))
            segments.write(new)

        def tx() -> None:
            with durable.transaction(self.conn):
                seg_id = None
                if new is not None:
                    seg_id = self.conn.execute(
                        "INSERT INTO segments(file, rows, sha256, cfile, crows, csha256) VALUES (?, ?, ?, ?, ?, ?)",
                        new.row(),
                    ).lastrowid
                    self.conn.executemany("DELETE FROM intents WHERE file = ?", [(f,) for f in new.names])
                apply(seg_id)
                self._doom_unreferenced()

        self.db(tx)
        self.delete_doomed(segments)

    def _doom_unreferenced(self) -> None:
        """Inside a transaction: segments no page uses any more become intents (deleted after commit)."""
        dead = self.conn.execute(
            "SELECT id, file, cfile FROM segments WHERE id NOT IN (SELECT DISTINCT segment FROM pages)"
        ).fetchall()
        for seg_id, *names in dead:
            for file in filter(None, names):
                self.conn.execute("INSERT OR IGNORE INTO intents(file, since) VALUES (?, ?)", (file, time.time()))
            self.conn.execute("DELETE FROM segments WHERE id = ?", (seg_id,))

    def delete_doomed(self, segments: SegmentFiles) -> None:
        """After a commit: delete the files it doomed, then forget them. A crash in between leaves
        intents that the next writer's recovery completes."""
        doomed = self.db(lambda: [f for (f,) in self.conn.execute(
            "SELECT file FROM intents WHERE file NOT IN (SELECT file FROM segments WHERE file IS NOT NULL) "
            "AND file NOT IN (SELECT cfile FROM segments WHERE cfile IS NOT NULL)")])  # fmt: skip
        segments.delete(doomed)
        if doomed:
            self.db(lambda: self.forget(doomed))

    def forget(self, files: Sequence[str]) -> None:
        with durable.transaction(self.conn):
            self.conn.executemany("DELETE FROM intents WHERE file = ?", [(f,) for f in files])
