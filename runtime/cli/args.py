"""Argument groups the commands share, and the checks argparse cannot make."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..encoder.runner import ENGINES
from ..errors import UserError
from ..ingest.sources import DEFAULT_DPI, DEFAULT_MAX_FILE_MB
from ..ingest.stream import DEFAULT_BATCH_TILES
from ..stores.open import STORES

__all__ = ["DEFAULT_COMMIT_PAGES", "backend_arg", "bundle_args", "compact_args", "ingest_args", "path_arg",
           "positive", "split_backends", "store_args", "whole_number"]  # fmt: skip

# Pages per commit: what a crash can lose at most, and what a commit's fsyncs are spread over.
DEFAULT_COMMIT_PAGES = 16


def backend_arg(p: argparse.ArgumentParser, stores: bool) -> None:
    p.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default=None,
        help="what runs the graphs (default: the engine an index's precision needs, else this CPU's row of the "
        "engine table, which 'python -m runtime selftest' prints): "
        + "; ".join(f"{e.name}: {e.help}" for e in ENGINES.values()),
    )
    if stores:
        p.add_argument(
            "--store",
            choices=STORES,
            default=None,
            help="where pages live: local (default; --index DIR) or qdrant (--url, or embedded in --index)",
        )
    # The old spelling, one repeatable flag for both roles: still accepted, with a notice.
    p.add_argument("--backend", action="append", choices=(*STORES, *ENGINES) if stores else tuple(ENGINES), default=[],
                   help=argparse.SUPPRESS)  # fmt: skip


def split_backends(args: argparse.Namespace) -> None:
    """``--engine``/``--store`` (or the old ``--backend``, either role) -> args.engine, args.store."""
    chosen = list(getattr(args, "backend", None) or [])
    stores = [b for b in chosen if b in STORES]
    engines = [b for b in chosen if b in ENGINES]
    if len(stores) > 1 or len(engines) > 1:
        raise UserError(f"--backend given twice for the same role: {', '.join(chosen)}")
    if chosen:
        new = " ".join([*(f"--engine {e}" for e in engines), *(f"--store {s}" for s in stores)])
        print(f"note: --backend is the old spelling; use {new}", file=sys.stderr)
    engine, store = getattr(args, "engine", None), getattr(args, "store", None)
    if (engine and engines and engine != engines[0]) or (store and stores and store != stores[0]):
        raise UserError("--backend disagrees with --engine/--store; give one of them")
    # None: the one table of defaults picks (runtime.encoder.defaults), or what an index recorded.
    args.engine = engine or (engines[0] if engines else None)
    args.store = store or (stores[0] if stores else "local")


def whole_number(least: int, hint: str = "") -> Callable[[str], int]:
    """argparse type: an integer >= ``least``; ``hint`` says what the smallest value means."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}{hint}, got {value}")
        return value

    return parse


# ``-k 0``, ``--dpi 0`` are mistakes, not requests.
positive = whole_number(1)


def path_arg(text: str) -> str:
    """argparse type: a non-empty path. An empty one (an unset shell variable) would resolve to the
    working folder: ``index remove ""`` would forget every page under it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names nothing (is a shell variable unset?)")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL byte: {text!r}")
    return text


def bundle_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--bundle", type=path_arg, required=required, help="ONNX bundle directory (python -m export --target onnx)"
    )
    p.add_argument("--precision", help="bundle precision (default: the one this CPU runs best, see README)")
    p.add_argument("--threads", type=positive, help="threads the engine computes with (default: all cores)")


def store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index", type=path_arg, help="index directory (local backend; for qdrant without --url, its embedded store)"
    )

    p.add_argument("--url", help="qdrant: server URL (http://host:6333); default: embedded local mode in --index")
    p.add_argument("--collection", default="collfm2", help="qdrant: collection name (default collfm2)")


def compact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compact", metavar="KIND", type=_compaction, default=None,
                   help="when creating a local index: also store compact vectors and search them first: int8, "
                   "binary, rowcol, hier:F (pool factor F) or pool:K (at most K per page); see README")  # fmt: skip
    p.add_argument(
        "--drop-originals",
        action="store_true",
        help="when creating: keep only the compact vectors (smallest; scores are the compact ones)",
    )


def _compaction(text: str) -> Any:
    from ..stores.compact import Compaction

    try:
        return Compaction.parse(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=path_arg, metavar="PATH", help="images, folders, PDFs")
    p.add_argument("--dpi", type=positive, default=DEFAULT_DPI, help=f"PDF rasterisation (default {DEFAULT_DPI})")
    p.add_argument("--batch-tiles", type=positive, default=DEFAULT_BATCH_TILES, help="tiles per model call")
    p.add_argument(
        "--max-file-mb",
        type=positive,
        default=DEFAULT_MAX_FILE_MB,
        help=f"larger files are reported and skipped, never read (default {DEFAULT_MAX_FILE_MB})",
    )
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
