"""``python -m runtime encode | index add|info|remove | search``: the commands users live with."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError, UserError
from .index import Index, PageRecord, bundle_identity
from .ingest import DEFAULT_BATCH_TILES, DEFAULT_DPI, Encoded, Failed, Skipped, encode_stream, iter_sources, progress

__all__ = ["add_parsers", "run_command"]

# Pages per commit: what a crash can lose at most, and what a commit's fsyncs are spread over.
DEFAULT_COMMIT_PAGES = 16


STORES = ("local", "qdrant")
ENGINES = ("ort-cpu", "ort-cuda", "ort-trt", "trt")


def _backend_arg(p: argparse.ArgumentParser, stores: bool) -> None:
    choices = (*STORES, *ENGINES) if stores else ENGINES
    p.add_argument(
        "--backend",
        action="append",
        choices=choices,
        default=[],
        help="repeatable. What runs the graphs: ort-cpu (default), ort-cuda, ort-trt (ONNX Runtime providers) or "
        "trt (native TensorRT engines)"
        + ("; where pages live: local (default, --index DIR) or qdrant" if stores else ""),
    )


def _split_backends(args: argparse.Namespace) -> None:
    """``--backend qdrant --backend trt`` -> args.store = qdrant, args.engine_backend = trt."""
    chosen = list(args.backend or [])
    stores = [b for b in chosen if b in STORES]
    engines = [b for b in chosen if b in ENGINES]
    if len(stores) > 1 or len(engines) > 1:
        raise UserError(f"--backend given twice for the same role: {', '.join(chosen)}")
    args.store = stores[0] if stores else "local"
    args.engine_backend = engines[0] if engines else "ort-cpu"


def _bundle_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--bundle", required=required, help="ONNX bundle directory (python -m export --target onnx)")
    p.add_argument("--precision", help="bundle precision (default: the bundle's default)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", help="index directory (local backend; for qdrant without --url, its embedded store)")

    p.add_argument("--url", help="qdrant: server URL (http://host:6333); default: embedded local mode in --index")
    p.add_argument("--collection", default="collfm2", help="qdrant: collection name (default collfm2)")


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders, PDFs")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help=f"PDF rasterisation (default {DEFAULT_DPI})")
    p.add_argument("--batch-tiles", type=int, default=DEFAULT_BATCH_TILES, help="tiles per model call")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def add_parsers(sub: Any) -> None:
    enc = sub.add_parser("encode", help="encode pages to an .npz (embeddings, offsets, names)")
    _bundle_args(enc, required=True)
    enc.add_argument("--out", required=True, help="output .npz")
    enc.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    _backend_arg(enc, stores=False)
    _ingest_args(enc)

    idx = sub.add_parser("index", help="add, inspect or remove pages of an index")
    isub = idx.add_subparsers(dest="action", required=True)
    add = isub.add_parser("add", help="encode pages and add them (crash-safe, skips pages already there)")
    _store_args(add)
    _backend_arg(add, stores=True)
    _bundle_args(add, required=False)
    add.add_argument("--commit-pages", type=int, default=DEFAULT_COMMIT_PAGES, help="pages per commit")
    _ingest_args(add)
    info = isub.add_parser("info", help="what the index holds and which bundle made it")
    _store_args(info)
    _backend_arg(info, stores=True)
    info.add_argument("--json", action="store_true")
    rm = isub.add_parser("remove", help="forget every page of the given files")
    _store_args(rm)
    _backend_arg(rm, stores=True)
    rm.add_argument("paths", nargs="+", metavar="PATH")

    st = sub.add_parser("selftest", help="check a bundle's fidelity on this machine (its probe vs PyTorch's)")
    st.add_argument("--bundle", required=True, help="ONNX bundle directory (python -m export --target onnx)")
    st.add_argument("--precision", help="comma-separated precisions to check (default: every one the bundle has)")
    st.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    _backend_arg(st, stores=False)

    srch = sub.add_parser("search", help="rank indexed pages for a query (exact MaxSim)")
    _store_args(srch)
    _backend_arg(srch, stores=True)
    _bundle_args(srch, required=False)
    srch.add_argument("-k", type=int, default=10, help="results (default 10)")
    srch.add_argument("--json", action="store_true", help='[{"rank", "score", "path", "page"}, ...]')
    srch.add_argument("query", nargs="+", help="query text (several words are joined)")


def run_command(args: argparse.Namespace) -> int:
    try:
        _split_backends(args)
        if args.cmd not in ("encode", "selftest") and not args.index and not (args.store == "qdrant" and args.url):
            raise UserError("--index DIR is required (or --backend qdrant --url URL)")
        if args.cmd == "encode":
            return _encode(args)
        if args.cmd == "selftest":
            return _selftest(args)
        if args.cmd == "search":
            return _search(args)
        return {"add": _add, "info": _info, "remove": _remove}[args.action](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------


def _load(bundle_dir: str, precision: str | None, threads: int | None, backend: str = "ort-cpu") -> tuple[Any, Any]:
    from .model import ColLFM2
    from .processor import ColLFM2Processor

    model = ColLFM2.from_pretrained(bundle_dir, precision=precision, threads=threads, backend=backend)
    if model.bundle.random_weights:
        print("[runtime] WARNING: this bundle has RANDOM WEIGHTS; its rankings are meaningless", file=sys.stderr)
    return model, ColLFM2Processor.from_pretrained(bundle_dir)


@contextlib.contextmanager
def _open_store(args: argparse.Namespace, identity: dict[str, str] | None = None) -> Iterator[Any]:
    """The store named by --index/--backend; created (recording ``identity``) when it is new."""
    if args.store == "qdrant":
        from .qdrant_store import QdrantStore

        store = QdrantStore.open(args.url or args.index, args.collection, identity)
    else:
        root = Path(args.index)
        store = (
            Index.open(root) if (root / "index.sqlite").exists() or identity is None else Index.create(root, identity)
        )
    try:
        yield store
    finally:
        store.close()


def _exists(args: argparse.Namespace) -> bool:
    return args.store == "qdrant" or (Path(args.index) / "index.sqlite").exists()


def _report_failure(item: Failed) -> None:
    print(f"error: {item.message}", file=sys.stderr)


def _encode(args: argparse.Namespace) -> int:
    model, proc = _load(args.bundle, args.precision, args.threads, args.engine_backend)
    rows, offsets, names, pages = [], [0], [], []
    failed = 0
    bar = progress(None, "encode", enabled=False if args.no_progress else None)
    for item in encode_stream(model, proc, iter_sources(args.paths, args.dpi), args.batch_tiles):
        if isinstance(item, Failed):
            failed += 1
            _report_failure(item)
            continue
        assert isinstance(item, Encoded)
        rows.append(item.embeddings.astype(args.dtype))
        offsets.append(offsets[-1] + len(item.embeddings))
        names.append(item.source.path)
        pages.append(item.source.page)
        bar.update()
    bar.close()
    if not names:
        print("error: no page could be encoded", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(
        tmp,
        embeddings=np.concatenate(rows),
        offsets=np.asarray(offsets, np.int64),
        names=np.asarray(names, dtype=str),
        pages=np.asarray(pages, np.int64),
    )
    tmp.replace(out)
    print(f"wrote {out}: {len(names)} pages, {offsets[-1]} vectors x {rows[0].shape[1]} ({args.dtype})")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
        return 1
    return 0


def _selftest(args: argparse.Namespace) -> int:
    from .selftest import format_report, selftest

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()] if args.precision else None
    report = selftest(args.bundle, precisions, args.engine_backend, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(format_report(report)))
    return 0 if report["passed"] else 1


def _add(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if not _exists(args) and not args.bundle:
        raise StoreError(f"{args.index}: no index yet; pass --bundle to create it")
    bundle_dir = args.bundle
    if bundle_dir is None:  # the bundle recorded at creation
        with _open_store(args) as store:
            bundle_dir, precision = store.meta["bundle_path"], store.meta["precision"]
        args.precision = args.precision or precision
    model, proc = _load(bundle_dir, args.precision, args.threads, args.engine_backend)
    identity = bundle_identity(model.bundle, model.precision)
    added = skipped = failed = 0
    with _open_store(args, identity) as store:
        store.check_bundle(identity)
        writer = store.writer() if isinstance(store, Index) else contextlib.nullcontext(store)
        with writer:
            # Read by the preprocessing thread, written here: set membership is atomic in CPython.
            known = _stored_hashes(store)

            def skip(src: Any) -> str | None:
                return "already indexed" if src.content_hash in known else None

            pending: list[PageRecord] = []
            bar = progress(None, "index add", enabled=False if args.no_progress else None)

            def commit() -> None:
                nonlocal added, skipped
                n = store.add_batch(pending)
                added += n
                skipped += len(pending) - n
                pending.clear()

            for item in encode_stream(model, proc, iter_sources(args.paths, args.dpi), args.batch_tiles, skip=skip):
                if isinstance(item, Failed):
                    failed += 1
                    _report_failure(item)
                elif isinstance(item, Skipped):
                    skipped += 1
                    print(f"skipped {item.source.name}: {item.reason}", file=sys.stderr)
                else:
                    known.add(item.source.content_hash)
                    src = item.source
                    pending.append(PageRecord(src.path, src.page, src.content_hash, src.size, item.embeddings))
                    if len(pending) >= args.commit_pages:
                        commit()
                bar.update()
            if pending:
                commit()
            bar.close()
    secs = time.perf_counter() - t0
    print(f"added {added} page(s), skipped {skipped} already indexed, {failed} failed, in {secs:.1f}s")
    if failed:
        return 1 if added or skipped else 2
    return 0


def _stored_hashes(store: Any) -> set[str]:
    if isinstance(store, Index):
        return {r["content_hash"] for r in store.pages()}
    return set()  # qdrant: add_batch checks each page against the collection instead


def _info(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>24}: {v}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        writer = store.writer() if isinstance(store, Index) else contextlib.nullcontext(store)
        with writer:
            n = store.remove([str(Path(p).resolve()) for p in args.paths])
    print(f"removed {n} page(s)")
    return 0 if n else 1


def _search(args: argparse.Namespace) -> int:
    query = " ".join(args.query)
    with _open_store(args) as store:
        meta = store.meta
        model, proc = _load(
            args.bundle or meta["bundle_path"], args.precision or meta["precision"], args.threads, args.engine_backend
        )
        store.check_bundle(bundle_identity(model.bundle, model.precision))
        batch = proc.process_queries([query])
        emb = model(**batch)[0]
        q = emb[batch["attention_mask"][0] > 0]
        hits = store.search([q], k=args.k)[0]
    if args.json:
        print(json.dumps([h.as_dict() for h in hits]))
        return 0
    if not hits:
        print("the index is empty")
        return 0
    print(f"{'rank':>4}  {'score':>9}  {'page':>4}  file")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:9.4f}  {h.page:>4}  {h.path}")
    return 0
