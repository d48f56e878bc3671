"""What every command needs: the model (with its random-weights warning), the store named by
``--store``/``--index``/``--url``, and the two together with the bundle checked against the store."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import StoreError
from ..ingest.sources import Failed
from ..stores.base import bundle_identity
from ..stores.open import open_store, store_exists

__all__ = ["check_compact", "existing_store", "exists", "load_model", "report_failure", "store", "store_with_model"]


def load_model(bundle_dir: str, precision: str | None, threads: int | None, backend: str | None = None) -> Any:
    """The model (with its processor, ``model.processor``), and the random-weights warning.

    ``backend`` None: the engine that made ``precision`` (as an index records it), else this
    machine's default (``runtime.encoder.defaults``)."""
    from ..encoder.defaults import engine_for, slower_than_fp32
    from ..encoder.model import ColLFM2

    backend = backend or engine_for(precision)
    model = ColLFM2.from_pretrained(bundle_dir, precision=precision, threads=threads, backend=backend)
    slow = slower_than_fp32(backend, model.precision, model.bundle.methods("int8")) if precision else None
    if slow:  # asked for by name: say so once, and run it
        print(f"[runtime] note: {backend} {model.precision}: {slow}", file=sys.stderr)
    if model.bundle.random_weights:
        print("[runtime] WARNING: this bundle has RANDOM WEIGHTS; its rankings are meaningless", file=sys.stderr)
    return model


def store(args: argparse.Namespace, identity: dict[str, str] | None = None) -> contextlib.AbstractContextManager:
    """The store the arguments name; created (recording ``identity``) when it is new."""
    return open_store(args.store, args.index, getattr(args, "url", None), getattr(args, "collection", "collfm2"),
                      identity, getattr(args, "compact", None),
                      not getattr(args, "drop_originals", False))  # fmt: skip


def exists(args: argparse.Namespace) -> bool:
    return store_exists(args.store, args.index, getattr(args, "url", None))


def existing_store(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if not exists(args):
        raise StoreError(f"{args.index}: no index here")
    return store(args)


@contextlib.contextmanager
def store_with_model(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """An existing store and the model of the bundle that made it (``--bundle`` and ``--precision``
    override what the store recorded), refused when the two disagree."""
    with store(args) as s:
        meta = s.meta
        model = load_model(args.bundle or meta["bundle_path"], args.precision or meta["precision"], args.threads,
                           args.engine)  # fmt: skip
        s.check_bundle(bundle_identity(model.bundle, model.precision))
        yield s, model


def check_compact(s: Any, args: argparse.Namespace) -> None:
    """--compact / --drop-originals are fixed when an index is created; later runs must agree."""
    want, have = getattr(args, "compact", None), getattr(s, "compaction", None)
    if want is not None and str(want) != str(have):
        raise StoreError(f"{args.index or args.url}: this store's compact representation is {have or 'none'}, not "
                         f"{want}; it is chosen when the index is created (use a new --index)")  # fmt: skip
    if getattr(args, "drop_originals", False) and getattr(s, "keeps_originals", True):
        raise StoreError(f"{args.index}: this index keeps its original vectors; --drop-originals applies at creation")


def report_failure(item: Failed) -> None:
    print(f"error: {item.message}", file=sys.stderr)
