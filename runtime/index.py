"""A crash-safe on-disk multi-vector index: fp16 segments + SQLite metadata.

Layout of ``DIR``::

    index.sqlite          meta (bundle identity, dim), segments, pages (path, page, hash, size, time)
    segments/000001.f16   raw float16 rows [n, dim], one file per committed batch, never rewritten
    index.lock            writers take an exclusive flock on it

Commit protocol for a batch (``Index.add_batch``): write the rows to a temp file, fsync, rename it
to its segment name, fsync the directory, and only then commit the SQLite transaction that points
pages at it. A process killed at any point leaves either a committed batch or an unreferenced
file, which the next writer deletes: pages are never half-present, and committed pages are never
touched. Search memory-maps the segments and scores with the exact blocked MaxSim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .scoring import score_packed

__all__ = ["Hit", "Index", "PageRecord", "bundle_identity", "check_identity"]

SCHEMA_VERSION = 1
DB = "index.sqlite"
SEGMENTS = "segments"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pages (
    id INTEGER PRIMARY KEY,
    segment INTEGER NOT NULL REFERENCES segments(id),
    row_start INTEGER NOT NULL,
    row_count INTEGER NOT NULL,
    path TEXT NOT NULL,
    page INTEGER NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pages_path ON pages(path);
"""


@dataclass(frozen=True)
class PageRecord:
    """One page to store: its embedding rows and where it came from."""

    path: str
    page: int
    content_hash: str
    size: int
    embeddings: np.ndarray  # [n, dim], real rows only


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str
    page: int

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "path": self.path, "page": self.page}


def bundle_identity(bundle: Any, precision: str) -> dict[str, str]:
    """What an index records about the bundle that made its vectors (``runtime.bundle.Bundle``)."""
    manifest = bundle.path / "manifest.json"
    source = bundle.manifest["source"]
    model = source.get("preset") or source.get("path") or "unknown"
    return {
        "bundle_path": str(bundle.path.resolve()),
        "bundle_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "bundle_model": str(model),
        "bundle_random_weights": json.dumps(bool(source.get("random_weights", False))),
        "precision": precision,
        "dim": str(bundle.model["dim"]),
    }


def check_identity(where: str, meta: dict[str, str], identity: dict[str, str], remedy: str) -> None:
    """Raise ``StoreError`` unless ``identity`` is the bundle recorded in a store's ``meta``."""
    for key in ("bundle_manifest_sha256", "precision", "dim"):
        if meta.get(key) != identity.get(key):
            raise StoreError(
                f"{where}: built with bundle {meta.get('bundle_model')} ({meta.get('precision')}, manifest "
                f"{meta.get('bundle_manifest_sha256', '')[:12]}...), not {identity.get('bundle_model')} "
                f"({identity.get('precision')}, manifest {identity.get('bundle_manifest_sha256', '')[:12]}...): "
                f"{key} differs. Vectors of different bundles cannot be compared; {remedy}"
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Index:
    """Open with ``Index.open(dir)`` (existing) or ``Index.create(dir, identity)``."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn
        self._maps: dict[int, np.ndarray] = {}

    # -- opening --------------------------------------------------------------------------

    @staticmethod
    def _connect(root: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(root / DB), isolation_level=None, timeout=30)
        # DELETE journal + FULL sync: a commit is on disk when it returns (WAL would be faster
        # but adds files that must travel with the index).
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @classmethod
    def create(cls, root: str | os.PathLike, identity: dict[str, str]) -> Index:
        root = Path(root)
        if (root / DB).exists():
            raise StoreError(f"{root}: an index already exists here")
        if root.exists() and any(root.iterdir()):
            raise StoreError(f"{root}: exists and is not an index (and not empty); choose a new directory")
        (root / SEGMENTS).mkdir(parents=True, exist_ok=True)
        conn = cls._connect(root)
        with _transaction(conn):  # schema and identity appear together or not at all
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            rows = {"schema_version": str(SCHEMA_VERSION), "created": _now_iso(), **identity}
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(rows.items()))
        return cls(root, conn)

    @classmethod
    def open(cls, root: str | os.PathLike) -> Index:
        root = Path(root)
        if not (root / DB).is_file():
            raise StoreError(f"{root}: no index here (create one with: python -m runtime index add --index DIR ...)")
        try:
            conn = cls._connect(root)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{root / DB}: not a readable index database ({exc})") from exc
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreError(
                f"{root}: index schema {meta.get('schema_version')!r}, this runtime reads {SCHEMA_VERSION}"
            )
        return cls(root, conn)

    def close(self) -> None:
        self._maps.clear()
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def check_bundle(self, identity: dict[str, str]) -> None:
        """Refuse a bundle other than the one that made this index's vectors."""
        check_identity(str(self.root), self.meta, identity, "use a new index")

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[Index]:
        """Exclusive writer lock; cleans up what a killed writer left (unreferenced files)."""
        import fcntl

        with open(self.root / "index.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root}: another process is writing to this index") from None
            try:
                self._cleanup()
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _cleanup(self) -> None:
        known = {f for (f,) in self.conn.execute("SELECT file FROM segments")}
        for f in (self.root / SEGMENTS).iterdir():
            if f.name not in known:
                f.unlink()  # a temp file or a segment whose metadata never committed

    def has(self, content_hash: str) -> bool:
        return self.conn.execute("SELECT 1 FROM pages WHERE content_hash = ?", (content_hash,)).fetchone() is not None

    def add_batch(self, records: Sequence[PageRecord]) -> int:
        """Commit ``records`` atomically (call inside ``writer()``). Returns pages added; a page
        whose content hash is already stored (or repeated within the batch) is skipped."""
        seen: set[str] = set()
        fresh = []
        for r in records:
            if r.content_hash in seen or self.has(r.content_hash):
                continue
            seen.add(r.content_hash)
            if r.embeddings.ndim != 2 or r.embeddings.shape[1] != self.dim:
                raise ValueError(f"{r.path}: embeddings {r.embeddings.shape}, index dim {self.dim}")
            fresh.append(r)
        if not fresh:
            return 0
        rows = np.concatenate([r.embeddings for r in fresh]).astype(np.float16)
        seg_id = (self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()[0] or 0) + 1
        name = f"{seg_id:06d}.f16"
        seg_dir = self.root / SEGMENTS
        data = rows.tobytes()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=seg_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, seg_dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(seg_dir)
        now = time.time()
        with _transaction(self.conn):
            self.conn.execute(
                "INSERT INTO segments(id, file, rows, sha256) VALUES (?, ?, ?, ?)",
                (seg_id, name, len(rows), hashlib.sha256(data).hexdigest()),
            )
            start = 0
            for r in fresh:
                self.conn.execute(
                    "INSERT INTO pages(segment, row_start, row_count, path, page, content_hash, size, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seg_id, start, len(r.embeddings), r.path, r.page, r.content_hash, r.size, now),
                )
                start += len(r.embeddings)
        return len(fresh)

    def remove(self, paths: Sequence[str]) -> int:
        """Forget every page of ``paths`` (call inside ``writer()``); returns pages removed.

        Their rows stay in the segments as dead space (``info`` shows it); segments whose pages
        are all gone are deleted."""
        with _transaction(self.conn):
            n = 0
            for p in paths:
                n += self.conn.execute("DELETE FROM pages WHERE path = ?", (p,)).rowcount
            dead = [
                (i, f)
                for i, f in self.conn.execute(
                    "SELECT id, file FROM segments WHERE id NOT IN (SELECT DISTINCT segment FROM pages)"
                )
            ]
            self.conn.executemany("DELETE FROM segments WHERE id = ?", [(i,) for i, _ in dead])
        for _, f in dead:  # after the commit: a crash before this leaves files _cleanup removes
            with contextlib.suppress(FileNotFoundError):
                (self.root / SEGMENTS / f).unlink()
            self._maps.clear()
        return n

    # -- reading --------------------------------------------------------------------------

    def _segment(self, seg_id: int, file: str, rows: int) -> np.ndarray:
        arr = self._maps.get(seg_id)
        if arr is None:
            path = self.root / SEGMENTS / file
            expected = rows * self.dim * 2
            if not path.is_file() or path.stat().st_size != expected:
                raise StoreError(f"{path}: missing or wrong size (expected {expected} bytes); the index is damaged")
            arr = np.memmap(path, dtype=np.float16, mode="r", shape=(rows, self.dim))
            self._maps[seg_id] = arr
        return arr

    def pages(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT id, path, page, content_hash, size, added, row_count FROM pages ORDER BY id")
        keys = ("id", "path", "page", "content_hash", "size", "added", "rows")
        return [dict(zip(keys, row, strict=True)) for row in cur]

    def info(self) -> dict[str, Any]:
        n_pages, live_rows = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(row_count), 0) FROM pages").fetchone()
        n_segs, all_rows = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM segments").fetchone()
        size = sum(f.stat().st_size for f in (self.root / SEGMENTS).iterdir())
        return {
            **self.meta,
            "pages": n_pages,
            "rows": live_rows,
            "dead_rows": all_rows - live_rows,
            "segments": n_segs,
            "bytes": size,
        }

    def search(self, queries: Sequence[np.ndarray], k: int = 10) -> list[list[Hit]]:
        """Exact MaxSim of each query [n_q, dim] against every page; top ``k`` per query."""
        cur = self.conn.execute(
            "SELECT p.segment, s.file, s.rows, p.row_start, p.row_count, p.path, p.page "
            "FROM pages p JOIN segments s ON s.id = p.segment ORDER BY p.segment, p.row_start"
        )
        by_seg: dict[int, list[tuple]] = {}
        files: dict[int, tuple[str, int]] = {}
        for seg, file, rows, start, count, path, page in cur:
            by_seg.setdefault(seg, []).append((start, count, path, page))
            files[seg] = (file, rows)
        scores, meta = [], []
        for seg, pages in by_seg.items():
            arr = self._segment(seg, *files[seg])
            # Pages of a segment are contiguous unless some were removed: score the live ranges.
            starts = np.array([p[0] for p in pages], np.int64)
            counts = np.array([p[1] for p in pages], np.int64)
            if np.array_equal(starts[1:], (starts + counts)[:-1]):
                lo = int(starts[0])
                offsets = np.concatenate([[0], np.cumsum(counts)])
                scores.append(score_packed(queries, arr[lo : lo + int(offsets[-1])], offsets))
            else:
                rows = np.concatenate([arr[s : s + c] for s, c in zip(starts, counts, strict=True)])
                scores.append(score_packed(queries, rows, np.concatenate([[0], np.cumsum(counts)])))
            meta += [(p[2], p[3]) for p in pages]
        if not meta:
            return [[] for _ in queries]
        all_scores = np.concatenate(scores, axis=1)  # [Q, pages]
        out = []
        for row in all_scores:
            kk = min(k, len(row))
            top = np.argpartition(-row, kk - 1)[:kk]
            top = top[np.lexsort((top, -row[top]))]  # by score, ties by insertion order
            out.append([Hit(r + 1, float(row[i]), meta[i][0], meta[i][1]) for r, i in enumerate(top)])
        return out

    def check(self) -> list[str]:
        """Consistency problems (empty list = healthy): every page's rows inside an existing segment
        of the right size with the recorded hash, and no overlap between pages."""
        problems = []
        for seg_id, file, rows, digest in self.conn.execute("SELECT id, file, rows, sha256 FROM segments"):
            path = self.root / SEGMENTS / file
            if not path.is_file():
                problems.append(f"segment {file} missing")
                continue
            data = path.read_bytes()
            if len(data) != rows * self.dim * 2:
                problems.append(f"segment {file}: {len(data)} bytes, expected {rows * self.dim * 2}")
            elif hashlib.sha256(data).hexdigest() != digest:
                problems.append(f"segment {file}: sha256 mismatch")
            spans = self.conn.execute(
                "SELECT row_start, row_count FROM pages WHERE segment = ? ORDER BY row_start", (seg_id,)
            ).fetchall()
            end = 0
            for start, count in spans:
                if start < end or start + count > rows or count <= 0:
                    problems.append(f"segment {file}: bad page span {start}+{count}")
                end = start + count
        return problems


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
