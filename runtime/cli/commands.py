"""``python -m runtime encode | index add|info|check|compact|remove | search | selftest``: the commands
users live with."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QueryError, StoreError, UserError
from ..ingest.stream import (
    DEFAULT_BATCH_TILES,
    DEFAULT_DPI,
    Encoded,
    Failed,
    Skipped,
    encode_stream,
    iter_sources,
    progress,
)
from ..stores.local.index import DB, DEFAULT_RERANK, Index, PageRecord, bundle_identity

__all__ = ["add_parsers", "run_command"]

# Pages per commit: what a crash can lose at most, and what a commit's fsyncs are spread over.
DEFAULT_COMMIT_PAGES = 16


STORES = ("local", "qdrant")
ENGINES = ("ort-cpu", "ort-cuda", "ort-trt", "trt")


def _backend_arg(p: argparse.ArgumentParser, stores: bool) -> None:
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="what runs the graphs: ort-cpu (default), ort-cuda, ort-trt (ONNX Runtime providers) or trt "
                   "(native TensorRT engines)")  # fmt: skip
    if stores:
        p.add_argument(
            "--store",
            choices=STORES,
            default=None,
            help="where pages live: local (default; --index DIR) or qdrant (--url, or embedded in --index)",
        )
    # The old spelling, one repeatable flag for both roles: still accepted, with a notice.
    p.add_argument("--backend", action="append", choices=(*STORES, *ENGINES) if stores else ENGINES, default=[],
                   help=argparse.SUPPRESS)  # fmt: skip


def _split_backends(args: argparse.Namespace) -> None:
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
    args.engine = engine or (engines[0] if engines else "ort-cpu")
    args.store = store or (stores[0] if stores else "local")


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (``-k 0``, ``--dpi 0`` are mistakes, not requests)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bundle_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--bundle", required=required, help="ONNX bundle directory (python -m export --target onnx)")
    p.add_argument("--precision", help="bundle precision (default: the one this CPU runs best, see README)")
    p.add_argument("--threads", type=_positive, help="ONNX Runtime threads (default: all cores)")


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", help="index directory (local backend; for qdrant without --url, its embedded store)")

    p.add_argument("--url", help="qdrant: server URL (http://host:6333); default: embedded local mode in --index")
    p.add_argument("--collection", default="collfm2", help="qdrant: collection name (default collfm2)")


def _compact_args(p: argparse.ArgumentParser) -> None:
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


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders, PDFs")
    p.add_argument("--dpi", type=_positive, default=DEFAULT_DPI, help=f"PDF rasterisation (default {DEFAULT_DPI})")
    p.add_argument("--batch-tiles", type=_positive, default=DEFAULT_BATCH_TILES, help="tiles per model call")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def add_parsers(sub: Any) -> None:
    enc = sub.add_parser("encode", help="encode pages to an .npz (embeddings, offsets, names)")
    _bundle_args(enc, required=True)
    enc.add_argument("--out", required=True, help="output .npz")
    enc.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    _backend_arg(enc, stores=False)
    _ingest_args(enc)

    idx = sub.add_parser("index", help="add, inspect, check, compact or remove pages of an index")
    isub = idx.add_subparsers(dest="action", required=True)
    add = isub.add_parser("add", help="encode pages and add them (crash-safe; changed files are replaced)")
    _store_args(add)
    _backend_arg(add, stores=True)
    _bundle_args(add, required=False)
    add.add_argument("--commit-pages", type=_positive, default=DEFAULT_COMMIT_PAGES,
                     help="pages per commit (a file's pages always commit together)")  # fmt: skip
    _compact_args(add)
    _ingest_args(add)
    info = isub.add_parser("info", help="what the index holds and which bundle made it")
    _store_args(info)
    _backend_arg(info, stores=True)
    info.add_argument("--json", action="store_true")
    chk = isub.add_parser("check", help="verify the database, every segment's checksum and every page's rows")
    _store_args(chk)
    _backend_arg(chk, stores=True)
    chk.add_argument("--json", action="store_true")
    cmp_ = isub.add_parser("compact", help="rewrite live rows so removed and replaced pages stop taking space")
    _store_args(cmp_)
    _backend_arg(cmp_, stores=True)
    imp = isub.add_parser("import", help="add pages encoded elsewhere (encode's .npz, e.g. from a GPU box)")
    _store_args(imp)
    _backend_arg(imp, stores=True)
    imp.add_argument("--commit-pages", type=_positive, default=DEFAULT_COMMIT_PAGES, help="pages per commit")
    _compact_args(imp)
    imp.add_argument("--bundle", help="creating the index: this machine's copy of the bundle that encoded the files")
    imp.add_argument("npz", nargs="+", metavar="FILE.npz")
    rm = isub.add_parser("remove", help="forget every page of the given files (or folders)")
    _store_args(rm)
    _backend_arg(rm, stores=True)
    rm.add_argument("--missing", action="store_true", help="also forget pages whose files no longer exist")
    rm.add_argument("paths", nargs="*", metavar="PATH")

    st = sub.add_parser("selftest", help="check a bundle's fidelity on this machine (its probe vs PyTorch's)")
    st.add_argument("--bundle", required=True, help="ONNX bundle directory (python -m export --target onnx)")
    st.add_argument("--precision", help="comma-separated precisions to check (default: every one the bundle has)")
    st.add_argument("--threads", type=_positive, help="ONNX Runtime threads (default: all cores)")
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    _backend_arg(st, stores=False)

    srch = sub.add_parser("search", help="rank indexed pages for a query (exact MaxSim)")
    _store_args(srch)
    _backend_arg(srch, stores=True)
    _bundle_args(srch, required=False)
    srch.add_argument("-k", type=_positive, default=10, help="results (default 10)")
    srch.add_argument(
        "--rerank",
        type=_positive,
        default=None,
        help=f"two-stage indexes: candidates the exact stage ranks (default {DEFAULT_RERANK})",
    )
    srch.add_argument("--exact", action="store_true", help="two-stage indexes: exact MaxSim over every page")
    srch.add_argument("--json", action="store_true", help='[{"rank", "score", "path", "page"}, ...]')
    srch.add_argument("--explain", metavar="DIR", help="also write each hit's similarity maps to DIR (see explain)")
    srch.add_argument("--dpi", type=_positive, default=DEFAULT_DPI, help="--explain: PDF rasterisation, as indexed")
    srch.add_argument("query", nargs="+", help="query text (several words are joined)")

    ex = sub.add_parser("explain", help="similarity maps: where on a page each query token matches")
    _bundle_args(ex, required=False)
    ex.add_argument("--index", help="a local index: its bundle, and the page's stored vectors when it holds them")
    ex.add_argument("--out", required=True, help="output folder (PNGs over the page, and an .npz of the maps)")
    ex.add_argument("--query", required=True, help="the query text")
    ex.add_argument("--page", type=_positive, default=1, help="page of a PDF or multi-page TIFF (default 1)")
    ex.add_argument("--dpi", type=_positive, default=DEFAULT_DPI, help=f"PDF rasterisation (default {DEFAULT_DPI})")
    ex.add_argument("--no-tokens", action="store_true", help="only the max and sum maps, not one per query token")
    ex.add_argument("file", help="the page's file (image, PDF, TIFF)")
    _backend_arg(ex, stores=False)


def run_command(args: argparse.Namespace) -> int:
    for stream in (sys.stdout, sys.stderr):
        # File names that are not UTF-8 arrive surrogate-escaped; print them as the bytes they were.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    try:
        _split_backends(args)
        if args.cmd == "explain":
            return _explain(args)
        if args.cmd not in ("encode", "selftest") and not args.index and not (args.store == "qdrant" and args.url):
            raise UserError("--index DIR is required (or --backend qdrant --url URL)")
        if args.store == "qdrant":
            _require_qdrant(bool(args.url))  # before a model is loaded for nothing
        if args.cmd == "encode":
            return _encode(args)
        if args.cmd == "selftest":
            return _selftest(args)
        if args.cmd == "search":
            return _search(args)
        actions = {"add": _add, "info": _info, "remove": _remove, "check": _check, "compact": _compact,
                   "import": _import}  # fmt: skip
        return actions[args.action](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _require_qdrant(server: bool) -> None:
    """A Qdrant server is reached with qdrant-client; the embedded store is qdrant-edge-py."""
    name, what = ("qdrant_client", "qdrant-client") if server else ("qdrant_edge", "qdrant-edge-py")
    try:
        __import__(name)
    except ImportError:
        raise UserError(f"the qdrant store needs {what} (pip install 'collfm2-edge[qdrant]')") from None


# ---------------------------------------------------------------------------------------------


def _load(bundle_dir: str, precision: str | None, threads: int | None, backend: str = "ort-cpu") -> Any:
    """The model (with its processor, ``model.processor``), and the random-weights warning."""
    from ..encoder.model import ColLFM2

    model = ColLFM2.from_pretrained(bundle_dir, precision=precision, threads=threads, backend=backend)
    if model.bundle.random_weights:
        print("[runtime] WARNING: this bundle has RANDOM WEIGHTS; its rankings are meaningless", file=sys.stderr)
    return model


@contextlib.contextmanager
def _open_store(args: argparse.Namespace, identity: dict[str, str] | None = None) -> Iterator[Any]:
    """The store named by --index/--backend; created (recording ``identity``) when it is new."""
    compact = getattr(args, "compact", None)
    keep = not getattr(args, "drop_originals", False)
    if args.store == "qdrant" and args.url:
        from ..stores.qdrant_server import QdrantStore

        store = QdrantStore.open(args.url, args.collection, identity)
    elif args.store == "qdrant":  # embedded: the real engine in-process
        from ..stores.qdrant_edge import QdrantEdgeStore

        store = QdrantEdgeStore.open(args.index, identity, compact, keep)
    else:
        root = Path(args.index)
        if (root / DB).exists() or identity is None:
            store = Index.open(root)
        else:
            store = Index.create(root, identity, compact, keep_originals=keep)
    try:
        yield store
    finally:
        store.close()


def _exists(args: argparse.Namespace) -> bool:
    if args.store == "qdrant" and args.url:
        return True
    if args.store == "qdrant":
        from ..stores.qdrant_edge import META

        return (Path(args.index) / META).is_file()
    root = Path(args.index)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: is a file, not an index directory")
    return (root / DB).exists()


def _report_failure(item: Failed) -> None:
    print(f"error: {item.message}", file=sys.stderr)


def _encode(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name the .npz file to write")
    model = _load(args.bundle, args.precision, args.threads, args.engine)
    rows, offsets, names, pages, hashes, sizes, layouts = [], [0], [], [], [], [], []
    failed = 0
    bar = progress(None, "encode", enabled=False if args.no_progress else None)
    for item in encode_stream(model, model.processor, iter_sources(args.paths, args.dpi), args.batch_tiles):
        if isinstance(item, Failed):
            failed += 1
            _report_failure(item)
            continue
        assert isinstance(item, Encoded)
        if item.source.note:
            print(f"note: {item.source.note}", file=sys.stderr)
        rows.append(item.embeddings.astype(args.dtype))
        offsets.append(offsets[-1] + len(item.embeddings))
        names.append(item.source.path)
        pages.append(item.source.page)
        hashes.append(item.source.content_hash)
        sizes.append(item.source.size)
        layouts.append(item.layout)
        bar.update()
    bar.close()
    if not names:
        print("error: no page could be encoded", file=sys.stderr)
        return 2
    tmp = out.with_name(f".{out.name}.tmp.npz")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            tmp,
            embeddings=np.concatenate(rows),
            offsets=np.asarray(offsets, np.int64),
            names=np.asarray(names, dtype=str),
            pages=np.asarray(pages, np.int64),
            # What `index import` needs to store these pages as `index add` would have.
            content_hashes=np.asarray(hashes, dtype=str),
            sizes=np.asarray(sizes, np.int64),
            layout_offsets=np.asarray(np.cumsum([0] + [len(x) for x in layouts]), np.int64),
            layouts=np.asarray([u for lay in layouts for u in lay], np.int64).reshape(-1, 3),
            identity=np.asarray(json.dumps(bundle_identity(model.bundle, model.precision))),
        )
        tmp.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"--out {out}: cannot write it ({exc.strerror or exc})") from exc
    print(f"wrote {out}: {len(names)} pages, {offsets[-1]} vectors x {rows[0].shape[1]} ({args.dtype})")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
        return 1
    return 0


def _selftest(args: argparse.Namespace) -> int:
    from ..encoder.selftest import format_report, selftest

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()] if args.precision else None
    report = selftest(args.bundle, precisions, args.engine, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(format_report(report)))
    return 0 if report["passed"] else 1


# What encode_stream's skip callback answers for a page whose bytes are stored under another path:
# its record is written with the stored rows, not encoded again.
_SHARE = "identical bytes are already stored"


def _add(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    exists = _exists(args)
    if not exists and not args.bundle:
        raise StoreError(f"{args.index}: no index yet; pass --bundle to create it")
    bundle_dir = args.bundle
    if bundle_dir is None:  # the bundle recorded at creation
        with _open_store(args) as store:
            bundle_dir, precision = store.meta["bundle_path"], store.meta["precision"]
        args.precision = args.precision or precision
    model = _load(bundle_dir, args.precision, args.threads, args.engine)
    identity = bundle_identity(model.bundle, model.precision)
    added = skipped = shared = failed = 0
    with contextlib.ExitStack() as stack:
        # A new index is created at its first commit, so a run that stores nothing leaves nothing.
        opened: list[Any] = []

        def store() -> Any:
            if not opened:
                s = stack.enter_context(_open_store(args, identity))
                s.check_bundle(identity)
                _check_compact(s, args)
                stack.enter_context(s.writer())
                opened.append(s)
            return opened[0]

        # Read by the preprocessing thread, written here: dict and set operations are atomic in CPython.
        stored: dict[tuple[str, int], str] = {}
        hashes: set[str] = set()
        if exists:
            for page in store().pages():
                stored[(page["path"], page["page"])] = page["content_hash"]
                hashes.add(page["content_hash"])
        sharing = exists and store().shares_rows

        def skip(src: Any) -> str | None:
            if stored.get((src.path, src.page)) == src.content_hash:
                return "already indexed"
            if sharing and src.content_hash in hashes:
                return _SHARE
            return None

        pending: list[PageRecord] = []
        last_path: list[str | None] = [None]
        bar = progress(None, "index add", enabled=False if args.no_progress else None)

        def commit() -> None:
            nonlocal added
            n = store().add_batch(pending)
            added += n
            for r in pending:
                stored[(r.path, r.page)] = r.content_hash
                hashes.add(r.content_hash)
            pending.clear()

        def at_file(path: str) -> None:
            # Commit only between files: a file's pages replace its old ones in one commit.
            if path != last_path[0]:
                if len(pending) >= args.commit_pages:
                    commit()
                last_path[0] = path

        sources = iter_sources(args.paths, args.dpi)
        for item in encode_stream(model, model.processor, sources, args.batch_tiles, skip=skip):
            if isinstance(item, Failed):
                at_file(item.path)
                failed += 1
                _report_failure(item)
            elif isinstance(item, Skipped):
                at_file(item.source.path)
                if item.reason == _SHARE:
                    src = item.source
                    pending.append(PageRecord(src.path, src.page, src.content_hash, src.size, None))
                    shared += 1
                else:
                    skipped += 1
                    print(f"skipped {item.source.name}: {item.reason}", file=sys.stderr)
            else:
                src = item.source
                at_file(src.path)
                if src.note and src.page == 1:
                    print(f"note: {src.note}", file=sys.stderr)
                pending.append(PageRecord(src.path, src.page, src.content_hash, src.size, item.embeddings, item.layout))
            bar.update()
        if pending:
            commit()
        bar.close()
    secs = time.perf_counter() - t0
    extra = f" ({shared} sharing the rows of identical stored pages)" if shared else ""
    print(f"added {added} page(s){extra}, skipped {skipped} already indexed, {failed} failed, in {secs:.1f}s")
    if failed:
        return 1 if added or skipped else 2
    return 0


def _check_compact(store: Any, args: argparse.Namespace) -> None:
    """--compact / --drop-originals are fixed when an index is created; later runs must agree."""
    want, have = getattr(args, "compact", None), getattr(store, "compaction", None)
    if want is not None and str(want) != str(have):
        raise StoreError(f"{args.index or args.url}: this store's compact representation is {have or 'none'}, not "
                         f"{want}; it is chosen when the index is created (use a new --index)")  # fmt: skip
    if getattr(args, "drop_originals", False) and getattr(store, "keeps_originals", True):
        raise StoreError(f"{args.index}: this index keeps its original vectors; --drop-originals applies at creation")


def _read_npz(path: Path) -> tuple[dict[str, str], list[PageRecord]]:
    """An ``encode`` output -> (the bundle identity it was made with, its pages)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable .npz ({exc})") from exc
    need = ("embeddings", "offsets", "names", "pages", "content_hashes", "sizes", "identity")
    missing = [k for k in need if k not in data]
    if missing:
        raise StoreError(f"{path}: lacks {', '.join(missing)}; encode it again with this version "
                         "(python -m runtime encode)")  # fmt: skip
    try:
        identity = json.loads(str(data["identity"]))
    except ValueError as exc:
        raise StoreError(f"{path}: its bundle identity is not valid JSON") from exc
    emb, off = data["embeddings"], data["offsets"]
    n = len(data["names"])
    if len(off) != n + 1 or off[-1] != len(emb) or emb.ndim != 2:
        raise StoreError(f"{path}: offsets, names and embeddings disagree; the file is damaged")
    lay_off = data.get("layout_offsets", np.zeros(n + 1, np.int64))
    lays = data.get("layouts", np.zeros((0, 3), np.int64))
    records = []
    for i in range(n):
        layout = tuple(tuple(int(v) for v in u) for u in lays[lay_off[i] : lay_off[i + 1]]) if len(lay_off) > i else ()
        rows = emb[off[i] : off[i + 1]].astype(np.float32)
        path, page, digest = str(data["names"][i]), int(data["pages"][i]), str(data["content_hashes"][i])
        records.append(PageRecord(path, page, digest, int(data["sizes"][i]), rows, layout))
    return identity, records


def _import(args: argparse.Namespace) -> int:
    """Pages encoded elsewhere into the index: same bundle (checked), same commits as ``add``."""
    from ..bundle.manifest import open_bundle
    from ..stores.base import check_identity

    added = 0
    for name in args.npz:
        identity, records = _read_npz(Path(name))
        if not _exists(args):
            # Created here, the index must name this machine's copy of the bundle (searches load it).
            if not args.bundle:
                raise StoreError(f"{args.index}: no index yet; pass --bundle (this machine's copy of the bundle "
                                 f"that encoded {name})")  # fmt: skip
            local = bundle_identity(open_bundle(args.bundle, verify=False), identity.get("precision", ""))
            check_identity(f"--bundle {args.bundle}", local, identity, f"it did not encode {name}")
            identity = local
        with _open_store(args, identity) as store, store.writer():
            store.check_bundle(identity)
            _check_compact(store, args)
            stored = {(p["path"], p["page"]): p["content_hash"] for p in store.pages()}
            fresh = [r for r in records if stored.get((r.path, r.page)) != r.content_hash]
            by_file: list[PageRecord] = []
            for i, r in enumerate(fresh):  # commit between files, as add does
                by_file.append(r)
                if len(by_file) >= args.commit_pages and (i + 1 == len(fresh) or fresh[i + 1].path != r.path):
                    added += store.add_batch(by_file)
                    by_file = []
            if by_file:
                added += store.add_batch(by_file)
        print(f"{name}: {len(records)} page(s), {len(records) - len(fresh)} already indexed")
    print(f"imported {added} page(s)")
    return 0


def _info(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>24}: {v}")
    return 0


def _existing(args: argparse.Namespace) -> Any:
    if not _exists(args):
        raise StoreError(f"{args.index}: no index here")
    return _open_store(args)


def _check(args: argparse.Namespace) -> int:
    with _existing(args) as store:
        problems = store.check()
        info = store.info() if not problems else {}
    if args.json:
        print(json.dumps({"healthy": not problems, "problems": problems}, indent=2))
    elif problems:
        for line in problems:
            print(f"problem: {line}")
        print(f"{len(problems)} problem(s): the index is damaged; pages in damaged segments must be added again")
    else:
        where = f" in {info['segments']} segment(s); every checksum verified" if "segments" in info else ""
        print(f"ok: {info['pages']} page(s){where}")
    return 1 if problems else 0


def _compact(args: argparse.Namespace) -> int:
    with _existing(args) as store, store.writer():
        res = store.compact()
    note = f"; {res['note']}" if res.get("note") else ""
    print(f"compacted: {res['rows_before']} -> {res['rows_after']} stored rows "
          f"({res['segments_rewritten']} segment(s) rewritten){note}")  # fmt: skip
    return 0


def _remove(args: argparse.Namespace) -> int:
    if not args.paths and not args.missing:
        raise UserError("name the files or folders to remove, or pass --missing")
    with _existing(args) as store, store.writer():
        targets = [str(Path(p).resolve()) for p in args.paths]
        folders = [t.rstrip(os.sep) + os.sep for t in targets if Path(t).is_dir()]
        if folders:  # a folder: every page stored under it
            targets += [p["path"] for p in store.pages() if p["path"].startswith(tuple(folders))]
        if args.missing:
            targets += store.missing_paths()
        n = store.remove(sorted(set(targets)))
    print(f"removed {n} page(s)")
    return 0 if n else 1


def _search_store(store: Any, q: np.ndarray, args: argparse.Namespace) -> list[Any]:
    return store.search([q], k=args.k, rerank=args.rerank, exact=args.exact)[0]


def _search(args: argparse.Namespace) -> int:
    query = " ".join(args.query)
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("the query is not valid UTF-8 text (check the terminal's locale)") from None
    with _open_store(args) as store:
        meta = store.meta
        model = _load(
            args.bundle or meta["bundle_path"], args.precision or meta["precision"], args.threads, args.engine
        )
        store.check_bundle(bundle_identity(model.bundle, model.precision))
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


def _page_source(path: str, page: int, dpi: int) -> Any:
    if Path(path).is_dir():
        raise UserError(f"{path}: a folder; explain takes one page's file")
    for src in iter_sources([path], dpi):
        if isinstance(src, Failed):
            raise UserError(src.message)
        if src.page == page:
            return src
    raise UserError(f"{path}: has no page {page}")


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
    image = Image.fromarray(decode_image(data, model.processor.decode, src.name))
    return write_maps(expl, image, out, stem, tokens)


def _stem(src: Any) -> str:
    stem = Path(src.path).stem or "page"
    return f"{stem}-p{src.page}" if src.pages > 1 or src.path.lower().endswith(".pdf") else stem


def _explain_hits(model: Any, store: Any, query: str, hits: list[Any], args: argparse.Namespace) -> int:
    failed = 0
    for h in hits:
        try:
            src = _page_source(h.path, h.page, args.dpi)
            _explain_page(model, store, query, src, args.explain, f"{h.rank:02d}-{_stem(src)}", tokens=False)
        except UserError as exc:  # a hit whose file moved or changed: say so, explain the others
            failed += 1
            print(f"error: explain rank {h.rank}: {exc}", file=sys.stderr)
    return failed


def _explain(args: argparse.Namespace) -> int:
    query = " ".join(args.query.split())
    if not query:
        raise QueryError("empty query: type some words to search for")
    src = _page_source(args.file, args.page, args.dpi)
    if args.index:
        args.store = "local"
        with _open_store(args) as store:
            meta = store.meta
            model = _load(args.bundle or meta["bundle_path"], args.precision or meta["precision"], args.threads,
                          args.engine)  # fmt: skip
            store.check_bundle(bundle_identity(model.bundle, model.precision))
            written = _explain_page(model, store, query, src, args.out, _stem(src), not args.no_tokens)
    else:
        if not args.bundle:
            raise UserError("explain needs --bundle BUNDLE or --index DIR")
        model = _load(args.bundle, args.precision, args.threads, args.engine)
        written = _explain_page(model, None, query, src, args.out, _stem(src), not args.no_tokens)
    print(f"wrote {len(written)} file(s) to {args.out} ({written[0].name}, ...)")
    return 0
