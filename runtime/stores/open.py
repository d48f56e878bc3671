"""Which store a command means, and opening it: the only place outside each store that knows
how a store is found on disk (the local index's ``index.sqlite``, embedded Qdrant's meta file)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError, UserError

__all__ = ["STORES", "open_store", "require_store", "store_exists"]

STORES = ("local", "qdrant")


def require_store(kind: str, url: str | None) -> None:
    """A Qdrant server is reached with qdrant-client, the embedded store is qdrant-edge-py: say
    which is missing before a model is loaded for nothing."""
    if kind != "qdrant":
        return
    name, what = ("qdrant_client", "qdrant-client") if url else ("qdrant_edge", "qdrant-edge-py")
    try:
        __import__(name)
    except ImportError:
        raise UserError(f"the qdrant store needs {what} (pip install 'collfm2-edge[qdrant]')") from None


def store_exists(kind: str, index: str | None, url: str | None) -> bool:
    """Whether the store already holds an index (a server is taken to exist)."""
    if kind == "qdrant" and url:
        return True
    if kind == "qdrant":
        from .qdrant_edge import META

        return (Path(index) / META).is_file()
    from .local.index import DB

    root = Path(index)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: is a file, not an index directory")
    return (root / DB).exists()


@contextlib.contextmanager
def open_store(
    kind: str,
    index: str | None,
    url: str | None = None,
    collection: str = "collfm2",
    identity: dict[str, str] | None = None,
    compact: Any = None,
    keep_originals: bool = True,
) -> Iterator[Any]:
    """The store (``runtime.stores.base.Store``), closed after the block; created, recording
    ``identity``, when it is new and ``identity`` is given."""
    if kind == "qdrant" and url:
        from .qdrant_server import QdrantStore

        store = QdrantStore.open(url, collection, identity)
    elif kind == "qdrant":  # embedded: the real engine in-process
        from .qdrant_edge import QdrantEdgeStore

        store = QdrantEdgeStore.open(index, identity, compact, keep_originals)
    else:
        from .local.index import Index

        if store_exists(kind, index, url) or identity is None:
            store = Index.open(Path(index))
        else:
            store = Index.create(Path(index), identity, compact, keep_originals=keep_originals)
    try:
        yield store
    finally:
        store.close()
