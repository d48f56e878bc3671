"""``index add | import | info | check | compact | remove``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError, UserError
from ..ingest.add import add_pages
from ..ingest.batches import FileBatches
from ..ingest.npz import read_npz
from ..ingest.sources import iter_sources
from ..ingest.stream import progress
from ..stores.base import bundle_identity, check_identity
from .common import check_compact, existing_store, exists, load_model, report_failure, store, store_with_model

__all__ = ["ACTIONS"]


def add(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if exists(args):
        with store_with_model(args) as (s, model):
            check_compact(s, args)
            with s.writer():
                return _add_pages(args, model, s, t0)
    if not args.bundle:
        raise StoreError(f"{args.index}: no index yet; pass --bundle to create it")
    return _add_pages(args, load_model(args.bundle, args.precision, args.threads, args.engine), None, t0)


def _add_pages(args: argparse.Namespace, model: Any, existing: Any, t0: float) -> int:
    """Encode and commit the pages of ``args.paths`` into ``existing`` (held for writing), or into
    a new index created at the first commit, so a run that stores nothing leaves nothing."""
    identity = bundle_identity(model.bundle, model.precision)
    with contextlib.ExitStack() as stack:
        opened: list[Any] = [existing] if existing is not None else []

        def target() -> Any:
            if not opened:
                s = stack.enter_context(store(args, identity))
                s.check_bundle(identity)
                check_compact(s, args)
                stack.enter_context(s.writer())
                opened.append(s)
            return opened[0]

        bar = progress(None, "index add", enabled=False if args.no_progress else None)

        def on_event(kind: str, *info: Any) -> None:
            if kind == "failed":
                report_failure(info[0])
            elif kind == "skipped":
                print(f"skipped {info[0].name}: {info[1]}", file=sys.stderr)
            elif kind == "note":
                print(f"note: {info[0].note}", file=sys.stderr)
            elif kind == "page":
                bar.update()

        sources = iter_sources(args.paths, args.dpi, args.max_file_mb)
        rep = add_pages(model, sources, target, existing, args.commit_pages, args.batch_tiles, on_event)
        bar.close()
    secs = time.perf_counter() - t0
    extra = f" ({rep.shared} sharing the rows of identical stored pages)" if rep.shared else ""
    print(
        f"added {rep.added} page(s){extra}, skipped {rep.skipped} already indexed, {rep.failed} failed, in {secs:.1f}s"
    )
    if rep.failed:
        return 1 if rep.added or rep.skipped else 2
    return 0


def import_(args: argparse.Namespace) -> int:
    """Pages encoded elsewhere into the index: same bundle (checked), same commits as ``add``.
    Each file is read and checked whole before anything is written, and a new index is created
    only when a first page commits, so a refused file leaves nothing behind."""
    from ..bundle.manifest import open_bundle

    added = 0
    for name in args.npz:
        identity, records = read_npz(Path(name))
        dim = identity.get("dim")
        wrong = next((r for r in records if r.embeddings is not None and str(r.embeddings.shape[1]) != dim), None)
        if wrong is not None:
            raise StoreError(f"{name}: {wrong.path} has {wrong.embeddings.shape[1]}-d rows, its bundle identity "
                             f"says {dim}; the file is damaged")  # fmt: skip
        if not exists(args):
            # Created here, the index must name this machine's copy of the bundle (searches load it).
            if not args.bundle:
                raise StoreError(f"{args.index}: no index yet; pass --bundle (this machine's copy of the bundle "
                                 f"that encoded {name})")  # fmt: skip
            local = bundle_identity(open_bundle(args.bundle, verify=False), identity.get("precision", ""))
            check_identity(f"--bundle {args.bundle}", local, identity, f"it did not encode {name}")
            identity = local
            if not records:
                print(f"{name}: 0 page(s); no index created")
                continue
        with store(args, identity) as s, s.writer():
            s.check_bundle(identity)
            check_compact(s, args)
            stored = {(p["path"], p["page"]): p["content_hash"] for p in s.pages()}
            fresh = [r for r in records if stored.get((r.path, r.page)) != r.content_hash]
            batches = FileBatches(args.commit_pages, s.add_batch)
            for r in fresh:
                batches.add(r)
            batches.flush()
            added += batches.stored
        print(f"{name}: {len(records)} page(s), {len(records) - len(fresh)} already indexed")
    print(f"imported {added} page(s)")
    return 0


def info(args: argparse.Namespace) -> int:
    with store(args) as s:
        facts = s.info()
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for k, v in facts.items():
            print(f"{k:>24}: {v}")
    return 0


def check(args: argparse.Namespace) -> int:
    with existing_store(args) as s:
        problems = s.check()
        facts = s.info() if not problems else {}
    if args.json:
        print(json.dumps({"healthy": not problems, "problems": problems}, indent=2))
    elif problems:
        for line in problems:
            print(f"problem: {line}")
        print(f"{len(problems)} problem(s): the index is damaged; pages in damaged segments must be added again")
    else:
        where = f" in {facts['segments']} segment(s); every checksum verified" if "segments" in facts else ""
        print(f"ok: {facts['pages']} page(s){where}")
    return 1 if problems else 0


def compact(args: argparse.Namespace) -> int:
    with existing_store(args) as s, s.writer():
        res = s.compact()
    note = f"; {res['note']}" if res.get("note") else ""
    print(f"compacted: {res['rows_before']} -> {res['rows_after']} stored rows "
          f"({res['segments_rewritten']} segment(s) rewritten){note}")  # fmt: skip
    return 0


def remove(args: argparse.Namespace) -> int:
    if not args.paths and not args.missing:
        raise UserError("name the files or folders to remove, or pass --missing")
    with existing_store(args) as s, s.writer():
        # A name matches as typed (made absolute) and with links resolved; a folder, existing or
        # not (an imported tree, a deleted one), matches every page stored under it.
        named = {os.path.abspath(p) for p in args.paths} | {str(Path(p).resolve()) for p in args.paths}
        under = tuple(t.rstrip(os.sep) + os.sep for t in named)
        targets = [p["path"] for p in s.pages() if p["path"] in named or p["path"].startswith(under)]
        kept = 0
        if args.missing:
            gone, kept = _missing(s.missing_paths())
            targets += gone
        n = s.remove(sorted(set(targets)))
    print(f"removed {n} page(s)")
    if kept:
        print(f"kept {kept} file(s) whose folder is not on this machine (another machine's paths, or a drive not "
              "mounted); remove them by name or folder", file=sys.stderr)  # fmt: skip
    return 0 if n else 1


def _missing(paths: list[str]) -> tuple[list[str], int]:
    """Of stored paths whose files are gone, those whose folder is here: a file deleted from a
    folder that exists. The others may live on another machine or an unplugged drive."""
    gone = [p for p in paths if os.path.isdir(os.path.dirname(p))]
    return gone, len(paths) - len(gone)


ACTIONS = {"add": add, "import": import_, "info": info, "check": check, "compact": compact, "remove": remove}
