"""``search`` (rank indexed pages for a query) and ``explain`` (similarity maps of a page)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QueryError, UserError
from ..ingest.sources import page_source
from .common import load_model, store_with_model

__all__ = ["explain", "search"]


def _search_store(store: Any, q: np.ndarray, args: argparse.Namespace) -> list[Any]:
    return store.search([q], k=args.k, rerank=args.rerank, exact=args.exact)[0]


def search(args: argparse.Namespace) -> int:
    query = " ".join(args.query)
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("the query is not valid UTF-8 text (check the terminal's locale)") from None
    if args.exact and args.rerank is not None:
        raise UserError("--rerank sets the candidates of two-stage search; --exact scores every page: give one")
    if args.explain:
        _writable_folder(args.explain, "--explain")  # before searching: a bad folder fails fast, in one line
    with store_with_model(args) as (store, model):
        (q,) = model.embed_queries([query])
        hits = _search_store(store, q, args)
        failed = _explain_hits(model, store, query, hits, args) if args.explain else 0
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], allow_nan=False))
        return 1 if failed else 0
    if not hits:
        print("the index is empty")
        return 0
    print(f"{'rank':>4}  {'score':>9}  {'page':>4}  file")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:9.4f}  {h.page:>4}  {h.path}")
    if args.explain:
        print(f"similarity maps of {len(hits) - failed} hit(s) in {args.explain}", file=sys.stderr)
    return 1 if failed else 0


def _writable_folder(path: str, flag: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot be a folder for the maps ({exc.strerror or exc})") from None


def _explain_page(model: Any, store: Any, query: str, src: Any, out: str, stem: str, tokens: bool) -> list[Path]:
    """Maps of one page: its stored rows when the store has this version of it, else encoded now."""
    from PIL import Image

    from ..explain import explain, write_maps
    from ..preprocess.image import decode_image

    rows = None
    stored = store.page_rows(src.path, src.page) if store is not None else None
    if stored is not None and stored[1] == src.content_hash:
        rows = stored[0]
    data = src.load()
    expl = explain(model, query, data, rows, name=src.name)
    if stored is not None and rows is None:
        # The stored rows belong to bytes no longer on disk: they cannot be drawn over this image.
        (q,) = model.embed_queries([query])
        then = float(np.max(stored[0].astype(np.float32) @ q.astype(np.float32).T, axis=0).sum())
        print(
            f"note: {src.name} changed since it was indexed: the index scores it {then:.4f}; these maps are of "
            f"the file as it is now (score {expl.score:.4f}); index add it again to update",
            file=sys.stderr,
        )
    image = Image.fromarray(decode_image(data, model.processor.decode, src.name))
    return write_maps(expl, image, out, stem, tokens)


def _stem(src: Any) -> str:
    stem = Path(src.path).stem or "page"
    return f"{stem}-p{src.page}" if src.pages > 1 or src.path.lower().endswith(".pdf") else stem


def _explain_hits(model: Any, store: Any, query: str, hits: list[Any], args: argparse.Namespace) -> int:
    failed = 0
    for h in hits:
        try:
            src = page_source(h.path, h.page, args.dpi)
            _explain_page(model, store, query, src, args.explain, f"{h.rank:02d}-{_stem(src)}", tokens=False)
        except UserError as exc:  # a hit whose file moved or changed: say so, explain the others
            failed += 1
            print(f"error: explain rank {h.rank}: {exc}", file=sys.stderr)
    return failed


def explain(args: argparse.Namespace) -> int:
    query = " ".join(args.query.split())
    if not query:
        raise QueryError("empty query: type some words to search for")
    src = page_source(args.file, args.page, args.dpi)
    _writable_folder(args.out, "--out")
    if args.index:
        args.store = "local"
        with store_with_model(args) as (store, model):
            written = _explain_page(model, store, query, src, args.out, _stem(src), not args.no_tokens)
    else:
        if not args.bundle:
            raise UserError("explain needs --bundle BUNDLE or --index DIR")
        model = load_model(args.bundle, args.precision, args.threads, args.engine)
        written = _explain_page(model, None, query, src, args.out, _stem(src), not args.no_tokens)
    print(f"wrote {len(written)} file(s) to {args.out} ({written[0].name}, ...)")
    return 0
