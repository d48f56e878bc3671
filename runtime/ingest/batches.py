"""Pages committed in groups, cut only between files: a file's records are its complete new set of
pages and replace its old ones in one commit, so a group never ends inside a file."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..stores.base import PageRecord

__all__ = ["FileBatches"]


class FileBatches:
    """Collects records; once at least ``size`` are pending, the next file's first item commits
    them (``commit(records) -> pages stored``). ``flush`` commits what is left."""

    def __init__(self, size: int, commit: Callable[[Sequence[PageRecord]], int]) -> None:
        self.size = size
        self._commit = commit
        self.pending: list[PageRecord] = []
        self.stored = 0
        self._path: str | None = None

    def at(self, path: str) -> None:
        """An item of ``path`` comes next (a record, or a page that failed or was skipped)."""
        if path != self._path:
            if len(self.pending) >= self.size:
                self.flush()
            self._path = path

    def add(self, record: PageRecord) -> None:
        self.at(record.path)
        self.pending.append(record)

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.stored += self._commit(batch)
