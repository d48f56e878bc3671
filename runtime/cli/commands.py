"""``python -m runtime encode | index add|import|info|check|compact|remove | search | serve | explain |
selftest``: the commands users live with. The parsers are here; each command group is a module
(``encode``, ``index``, ``search``) over the helpers in ``common``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from ..errors import UserError
from ..ingest.sources import DEFAULT_DPI
from ..stores.base import DEFAULT_RERANK
from ..stores.open import require_store
from .args import (
    DEFAULT_COMMIT_PAGES,
    backend_arg,
    bundle_args,
    compact_args,
    ingest_args,
    path_arg,
    positive,
    split_backends,
    store_args,
)
from .encode import encode, selftest
from .index import ACTIONS
from .search import explain, search
from .serve import add_serve_parser, serve

__all__ = ["add_parsers", "run_command"]


def add_parsers(sub: Any) -> None:
    enc = sub.add_parser("encode", help="encode pages to an .npz (embeddings, offsets, names)")
    bundle_args(enc, required=True)
    enc.add_argument("--out", type=path_arg, required=True, help="output .npz")
    enc.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    backend_arg(enc, stores=False)
    ingest_args(enc)

    idx = sub.add_parser("index", help="add, inspect, check, compact or remove pages of an index")
    isub = idx.add_subparsers(dest="action", required=True)
    add = isub.add_parser("add", help="encode pages and add them (crash-safe; changed files are replaced)")
    store_args(add)
    backend_arg(add, stores=True)
    bundle_args(add, required=False)
    add.add_argument("--commit-pages", type=positive, default=DEFAULT_COMMIT_PAGES,
                     help="pages per commit (a file's pages always commit together)")  # fmt: skip
    compact_args(add)
    ingest_args(add)
    info = isub.add_parser("info", help="what the index holds and which bundle made it")
    store_args(info)
    backend_arg(info, stores=True)
    info.add_argument("--json", action="store_true")
    chk = isub.add_parser("check", help="verify the database, every segment's checksum and every page's rows")
    store_args(chk)
    backend_arg(chk, stores=True)
    chk.add_argument("--json", action="store_true")
    cmp_ = isub.add_parser("compact", help="rewrite live rows so removed and replaced pages stop taking space")
    store_args(cmp_)
    backend_arg(cmp_, stores=True)
    imp = isub.add_parser("import", help="add pages encoded elsewhere (encode's .npz, e.g. from a GPU box)")
    store_args(imp)
    backend_arg(imp, stores=True)
    imp.add_argument("--commit-pages", type=positive, default=DEFAULT_COMMIT_PAGES, help="pages per commit")
    compact_args(imp)
    imp.add_argument(
        "--bundle", type=path_arg, help="creating the index: this machine's copy of the bundle that encoded the files"
    )
    imp.add_argument("npz", nargs="+", type=path_arg, metavar="FILE.npz")
    rm = isub.add_parser("remove", help="forget every page of the given files (or folders)")
    store_args(rm)
    backend_arg(rm, stores=True)
    rm.add_argument("--missing", action="store_true", help="also forget pages whose files no longer exist")
    rm.add_argument("paths", nargs="*", type=path_arg, metavar="PATH")

    st = sub.add_parser("selftest", help="check a bundle's fidelity on this machine (its probe vs PyTorch's)")
    st.add_argument(
        "--bundle", type=path_arg, required=True, help="ONNX bundle directory (python -m export --target onnx)"
    )
    st.add_argument("--precision", help="comma-separated precisions to check (default: every one the bundle has)")
    st.add_argument("--threads", type=positive, help="threads the engine computes with (default: all cores)")
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    backend_arg(st, stores=False)

    srch = sub.add_parser("search", help="rank indexed pages for a query (exact MaxSim)")
    store_args(srch)
    backend_arg(srch, stores=True)
    bundle_args(srch, required=False)
    srch.add_argument("-k", type=positive, default=10, help="results (default 10)")
    srch.add_argument(
        "--rerank",
        type=positive,
        default=None,
        help=f"two-stage indexes: candidates the exact stage ranks (default {DEFAULT_RERANK})",
    )
    srch.add_argument("--exact", action="store_true", help="two-stage indexes: exact MaxSim over every page")
    srch.add_argument("--json", action="store_true", help='[{"rank", "score", "path", "page"}, ...]')
    srch.add_argument(
        "--explain", type=path_arg, metavar="DIR", help="also write each hit's similarity maps to DIR (see explain)"
    )
    srch.add_argument("--dpi", type=positive, default=DEFAULT_DPI, help="--explain: PDF rasterisation, as indexed")
    srch.add_argument("query", nargs="+", help="query text (several words are joined)")

    add_serve_parser(sub)

    ex = sub.add_parser("explain", help="similarity maps: where on a page each query token matches")
    bundle_args(ex, required=False)
    ex.add_argument(
        "--index", type=path_arg, help="a local index: its bundle, and the page's stored vectors when it holds them"
    )
    ex.add_argument(
        "--out", type=path_arg, required=True, help="output folder (PNGs over the page, and an .npz of the maps)"
    )
    ex.add_argument("--query", required=True, help="the query text")
    ex.add_argument("--page", type=positive, default=1, help="page of a PDF or multi-page TIFF (default 1)")
    ex.add_argument("--dpi", type=positive, default=DEFAULT_DPI, help=f"PDF rasterisation (default {DEFAULT_DPI})")
    ex.add_argument("--no-tokens", action="store_true", help="only the max and sum maps, not one per query token")
    ex.add_argument("file", type=path_arg, help="the page's file (image, PDF, TIFF)")
    backend_arg(ex, stores=False)


def run_command(args: argparse.Namespace) -> int:
    for stream in (sys.stdout, sys.stderr):
        # File names that are not UTF-8 arrive surrogate-escaped; print them as the bytes they were.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    try:
        split_backends(args)
        if args.cmd == "explain":
            return explain(args)
        if args.cmd not in ("encode", "selftest") and not args.index and not (args.store == "qdrant" and args.url):
            raise UserError("--index DIR is required (or --backend qdrant --url URL)")
        require_store(args.store, getattr(args, "url", None))  # before a model is loaded for nothing
        if args.cmd == "encode":
            return encode(args)
        if args.cmd == "selftest":
            return selftest(args)
        if args.cmd == "search":
            return search(args)
        if args.cmd == "serve":
            return serve(args)
        return ACTIONS[args.action](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every commit is atomic: what was committed stays, the rest was never written.
        print("interrupted: pages committed before the interrupt are stored; nothing is half-written",
              file=sys.stderr)  # fmt: skip
        return 130
