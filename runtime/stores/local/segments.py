"""Segment files of the local index: ``segments/<name>.f16`` (fp16 rows [n, dim]) and the compact
vectors beside them (``runtime.stores.compact``), each written once (temp file, fsync, rename,
fsync of the folder), never changed, deleted only when the catalog has doomed it.

``SegmentFiles`` owns the folder: writing, mapping (fp16 rows and compact vectors memory-mapped,
once per process), verifying against the sha256 the catalog recorded, deleting. It
knows nothing of SQLite: the checksums come from the ``digest`` function it is handed."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import StoreError
from ..compact import Compaction
from . import durable

__all__ = ["SEGMENTS", "NewSegment", "SegmentFiles", "will_need"]

SEGMENTS = "segments"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class NewSegment:
    """One commit's files before they are written: the fp16 originals (``file``; None when the
    index drops them) and the compact vectors (``cfile``; None without a compact kind)."""

    file: str | None
    data: bytes | None
    rows: int  # original rows (recorded even when the originals are dropped)
    cfile: str | None
    cdata: bytes | None
    crows: int

    @property
    def names(self) -> list[str]:
        return [f for f in (self.file, self.cfile) if f is not None]

    def files(self) -> list[tuple[str, bytes]]:
        return [
            (f, d) for f, d in ((self.file, self.data), (self.cfile, self.cdata)) if f is not None and d is not None
        ]

    def row(self) -> tuple:
        """The segments table's (file, rows, sha256, cfile, crows, csha256) for it."""
        sha = hashlib.sha256(self.data).hexdigest() if self.data is not None else None
        csha = hashlib.sha256(self.cdata).hexdigest() if self.cdata is not None else None
        return self.file, self.rows, sha, self.cfile, self.crows, csha


def will_need(arr: np.ndarray, start: int, count: int) -> None:
    """Tell the kernel rows ``start:start+count`` of a memory-mapped segment are about to be read,
    so the rerank's ~100 scattered pages are fetched together instead of one page fault after
    another (cold page cache; benchmarks/results/scale.md)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not count:
        return
    row = arr.shape[1] * arr.itemsize
    lo = (start * row) // mmap.PAGESIZE * mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_WILLNEED, lo, (start + count) * row - lo)


class SegmentFiles:
    """The ``segments/`` folder of the index at ``root``."""

    def __init__(
        self, root: Path, dim: int, compaction: Compaction | None, digest: Callable[[int, str], str | None]
    ) -> None:
        self.root = root
        self.dir = root / SEGMENTS
        self.dim = dim
        self.compaction = compaction
        self._digest = digest  # (segment id, "sha256" | "csha256") -> the checksum recorded at commit
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._verified: set[tuple[int, str]] = set()

    # -- sizes and names ------------------------------------------------------------------

    @property
    def compact_row_bytes(self) -> int:
        return self.compaction.row_bytes(self.dim) if self.compaction else 0

    def expected(self, segment_rows: Iterable[tuple]) -> dict[str, tuple[int, str]]:
        """The catalog's segment rows (file, rows, sha256, cfile, crows, csha256) -> every file they
        name: name -> (bytes, sha256)."""
        out = {}
        for file, rows, sha, cfile, crows, csha in segment_rows:
            if file is not None:
                out[file] = (rows * self.dim * 2, sha)
            if cfile is not None:
                out[cfile] = (crows * self.compact_row_bytes, csha)
        return out

    def new(self, originals: np.ndarray | None, rows: int, compact: np.ndarray | None) -> NewSegment:
        """Fresh names for one commit's fp16 rows and compact vectors (either may be None)."""
        file = f"{uuid.uuid4().hex}.f16" if originals is not None else None
        cfile = f"{uuid.uuid4().hex}{self.compaction.suffix}" if compact is not None and self.compaction else None
        return NewSegment(file, originals.tobytes() if originals is not None else None, rows,
                          cfile, compact.tobytes() if cfile else None, len(compact) if cfile else 0)  # fmt: skip

    def listing(self) -> dict[str, Path]:
        return {f.name: f for f in self.dir.iterdir()}

    # -- writing and deleting -------------------------------------------------------------

    def write(self, segment: NewSegment) -> None:
        for name, data in segment.files():
            self._write(name, data)

    def _write(self, name: str, data: bytes) -> None:
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.dir)
            os.fchmod(fd, 0o666 & ~durable.umask())  # as a plain open() would: mkstemp's 0600 is for temp files
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / name)
            tmp = None
            durable.fsync_dir(self.dir)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise durable.os_error(self.root, exc, "writing a segment") from exc

    def delete(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()

    # -- reading --------------------------------------------------------------------------

    def fp16(self, seg_id: int, file: str, rows: int, verify: bool = False) -> np.ndarray:
        """A segment's fp16 rows [rows, dim], memory-mapped once per process."""
        return self._map(seg_id, file, np.float16, (rows, self.dim), verify, "sha256")

    def compact(self, seg_id: int, cfile: str, crows: int, verify: bool = False) -> np.ndarray:
        """A segment's compact vectors [crows, row_bytes] uint8, memory-mapped once per process: a
        search reads them once, into the codes it holds (``scan``), so RAM never holds them too."""
        return self._map(seg_id, cfile, np.uint8, (crows, self.compact_row_bytes), verify, "csha256")

    def read_compact(self, seg_id: int, cfile: str, crows: int, verify: bool = False) -> np.ndarray:
        """A segment's compact vectors read into RAM, not kept: [crows, row_bytes] uint8."""
        path = self.dir / cfile
        width = self.compact_row_bytes
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError:
            data = np.zeros(0, np.uint8)
        if data.size != crows * width:
            raise StoreError(f"{path}: missing or wrong size (expected {crows * width} bytes); the index is damaged")
        data = data.reshape(crows, width)
        if verify and (seg_id, cfile) not in self._verified:
            self.verify(seg_id, cfile, data, "csha256")
        return data

    def _map(
        self, seg_id: int, file: str, dtype: type, shape: tuple[int, int], verify: bool, column: str
    ) -> np.ndarray:
        key = (seg_id, file)
        arr = self._maps.get(key)
        if arr is None:
            path = self.dir / file
            expected = shape[0] * shape[1] * np.dtype(dtype).itemsize
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            if size != expected:
                raise StoreError(f"{path}: missing or wrong size (expected {expected} bytes); the index is damaged")
            arr = np.memmap(path, dtype=dtype, mode="r", shape=shape) if expected else np.zeros(shape, dtype)
            self._maps[key] = arr
        if verify and key not in self._verified:
            self.verify(seg_id, file, arr, column)
        return arr

    def release(self, arr: np.ndarray) -> None:
        """Drop a mapped file's pages from this process (they stay in the page cache): a search
        that has turned compact vectors into codes does not hold them twice."""
        mm = getattr(arr, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                mm.madvise(mmap.MADV_DONTNEED)

    def verify(self, seg_id: int, file: str, arr: Any, column: str = "sha256") -> None:
        digest = self._digest(seg_id, column)
        if hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest() != digest:
            raise StoreError(
                f"{self.dir / file}: contents do not match the checksum recorded at commit; "
                "the index is damaged. See: python -m runtime index check --index DIR"
            )
        self._verified.add((seg_id, file))

    def keep_only(self, segment_ids: set[int]) -> None:
        """Forget the maps of segments not in ``segment_ids`` (compacted or removed since: never read again)."""
        for old in [k for k in self._maps if k[0] not in segment_ids]:
            del self._maps[old]
            self._verified.discard(old)

    def close(self) -> None:
        self._maps.clear()
        self._verified.clear()
