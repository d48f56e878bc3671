"""Ingestion jobs: pages added by one background worker through the same ``add_pages`` and commit
protocol as ``index add``, with each job's progress kept in ``<index>/jobs/<id>.json``.

A job's file is replaced atomically (temp file, fsync, rename, fsync of the folder) after every
commit, so what it reports as committed always is (a kill -9 can only leave it behind the
index, never ahead). A service that starts finds the jobs a crash cut short and marks them
``interrupted``, with the pages they had committed. Uploaded files are kept, content-addressed,
in ``<index>/uploads/``: a hit can always be shown, and no client's file name reaches the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..ingest.add import add_pages
from ..ingest.sources import DEFAULT_DPI, DEFAULT_MAX_FILE_MB, iter_sources
from ..ingest.stream import DEFAULT_BATCH_TILES
from ..stores.open import open_store

__all__ = ["JOBS", "UPLOADS", "Ingestor", "QueueFull", "sniff"]

JOBS = "jobs"
UPLOADS = "uploads"
MAX_FAILURES_KEPT = 100

# Leading bytes -> the suffix the file is stored under (what the decoders go by).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"%PDF-", ".pdf"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
)


class QueueFull(UserError):
    """Too many jobs are waiting (HTTP 503 with Retry-After)."""


def sniff(data: bytes) -> str | None:
    """The suffix of an image or PDF by its first bytes, or None: the client's name and type are not trusted."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), None)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _Stop(Exception):
    """Raised inside a job when the service stops: what was committed stays, the rest waits."""


class Ingestor:
    """One worker thread that owns a writer connection to the store and runs jobs in turn."""

    def __init__(self, model: Any, store_kind: str, index: str, url: str | None = None, collection: str = "collfm2",
                 commit_pages: int = 16, batch_tiles: int = DEFAULT_BATCH_TILES, dpi: int = DEFAULT_DPI,
                 max_file_mb: int = DEFAULT_MAX_FILE_MB, max_queued: int = 16,
                 on_commit: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.model = model
        self.root = Path(index)
        self.jobs_dir = self.root / JOBS
        self.uploads = self.root / UPLOADS
        self.jobs_dir.mkdir(exist_ok=True)
        self.uploads.mkdir(exist_ok=True)
        self._open = lambda: open_store(store_kind, index, url, collection)
        self._settings = (commit_pages, batch_tiles, dpi, max_file_mb)
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._stopping = threading.Event()
        self._broken: str | None = None
        self._recover()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()

    # -- jobs on disk -------------------------------------------------------------------------

    def _recover(self) -> None:
        for f in sorted(self.jobs_dir.glob("*.json")):
            try:
                job = json.loads(f.read_text(encoding="utf-8"))
                job_id = str(job["id"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged job file is not a job: the index itself is intact
            if job.get("state") in ("queued", "running"):
                job["state"] = "interrupted"
                job["error"] = "the service stopped before the job finished; committed pages are stored"
                self._save(job)
            self._jobs[job_id] = job

    def _save(self, job: dict[str, Any]) -> None:
        _write_atomically(self.jobs_dir / f"{job['id']}.json", json.dumps(job).encode())

    # -- what the endpoints ask ----------------------------------------------------------------

    def store_upload(self, data: bytes, suffix: str) -> Path:
        """An uploaded file under ``uploads/`` by its sha256 (the same bytes are stored once)."""
        path = self.uploads / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not path.is_file() or path.stat().st_size != len(data):
            _write_atomically(path, data)
        return path

    def submit(self, paths: list[str], names: list[str] | None = None) -> dict[str, Any]:
        """Queue a job adding ``paths`` (files or folders); its record, as ``GET /jobs/{id}`` shows it."""
        if self._stopping.is_set():
            raise UserError("the service is shutting down")
        job = {"id": uuid.uuid4().hex[:16], "state": "queued", "created": time.time(), "paths": paths,
               "names": names or paths, "pages_seen": 0, "pages_done": 0, "pages_skipped": 0, "pages_failed": 0,
               "failures": [], "committed": [], "error": None}  # fmt: skip
        with self._lock:
            self._jobs[job["id"]] = job
            self._save(job)
            try:
                self._queue.put_nowait(("add", job, None))
            except queue.Full:
                job["state"], job["error"] = "refused", "too many jobs waiting"
                self._save(job)
                raise QueueFull(f"{self._queue.maxsize} jobs are waiting; retry later") from None
            return dict(job)

    def remove(self, paths: list[str], timeout: float) -> int:
        """Forget the pages of ``paths`` (exact stored paths), between jobs; pages removed."""
        future: Future = Future()
        try:
            self._queue.put(("remove", paths, future), timeout=timeout)
        except queue.Full:
            raise QueueFull("too many jobs are waiting; retry later") from None
        return future.result(timeout)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else json.loads(json.dumps(job))

    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 60.0) -> None:
        """Stop after the current commit; queued jobs stay ``queued`` on disk and are reported
        ``interrupted`` by the next start."""
        self._stopping.set()
        self._queue.put(("stop", None, None))
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self._open() as store:
                self._serve(store)
        except BaseException as exc:  # the store cannot be opened for writing: every job says why
            self._broken = " ".join(str(exc).split()) or type(exc).__name__
            while True:
                kind, item, future = self._queue.get()
                if kind == "stop":
                    return
                if future is not None:
                    future.set_exception(UserError(self._broken))
                if kind == "add":
                    with self._lock:
                        item["state"], item["error"] = "failed", self._broken
                        self._save(item)

    def _serve(self, store: Any) -> None:
        while True:
            kind, item, future = self._queue.get()
            if kind == "stop" or self._stopping.is_set():
                if future is not None:
                    future.set_exception(UserError("the service is shutting down"))
                if kind == "stop":
                    return
                continue
            if kind == "remove":
                try:
                    with store.writer():
                        n = store.remove(item)
                    future.set_result(n)
                    if self._on_commit:
                        self._on_commit()
                except BaseException as exc:
                    future.set_exception(exc)
                continue
            self._run_job(store, item)

    def _run_job(self, store: Any, job: dict[str, Any]) -> None:
        commit_pages, batch_tiles, dpi, max_file_mb = self._settings

        def on_event(kind: str, *info: Any) -> None:
            with self._lock:
                if kind == "page":
                    job["pages_seen"] += 1
                elif kind == "failed" and len(job["failures"]) < MAX_FAILURES_KEPT:
                    job["failures"].append(info[0].message)
                elif kind == "committed":
                    records, report = info
                    job["committed"] += [[r.path, r.page] for r in records]
                    job["pages_done"], job["pages_failed"] = report.added, report.failed
                    self._save(job)  # after the commit: the file never claims what is not stored
                if kind == "skipped":
                    job["pages_skipped"] += 1
                if kind == "failed":
                    job["pages_failed"] += 1
            if kind == "committed" and self._on_commit:
                self._on_commit()
            if self._stopping.is_set() and kind in ("page", "committed"):
                raise _Stop

        with self._lock:
            job["state"], job["started"] = "running", time.time()
            self._save(job)
        try:
            with store.writer():
                report = add_pages(self.model, iter_sources(job["paths"], dpi, max_file_mb), lambda: store, store,
                                   commit_pages, batch_tiles, on_event)  # fmt: skip
            state, error = "done", None
            with self._lock:
                job["pages_done"], job["pages_failed"] = report.added, report.failed
        except _Stop:
            state, error = "interrupted", "the service stopped; committed pages are stored"
        except UserError as exc:
            state, error = "failed", str(exc)
        except Exception as exc:  # a bug: the job says so in one line, the worker goes on
            state, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        with self._lock:
            job["state"], job["error"], job["finished"] = state, error, time.time()
            self._save(job)
