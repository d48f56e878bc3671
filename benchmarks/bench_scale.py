"""Search at scale: every index setting on one structured synthetic corpus, side by side.

    python benchmarks/bench_scale.py [--pages 10000 100000] [--queries 20] [--settings ...]
        [--commit-pages 16] [--query-tokens 4 16 32]
        [--bundle BUNDLE --model-pages 40] [--out benchmarks/results] [--name scale]

The corpus is built so that compact representations face what real page embeddings do (random
unit rows would make every method look the same):

* each page is 10 text rows near a few template directions, then a 16x16 grid of image tokens;
* most image tokens are background, near one of a few directions every page shares;
* content tokens sit in a few blocks of the grid, near one of the page's 3 topics (topics are
  shared by ~30 pages), and a few near the page's own detail direction;
* each query (20 tokens) is planted on one page: tokens near its topics and its detail, and
  template tokens; its planted page is what a good search returns.

Per setting: build seconds, bytes on disk and in RAM (the compact vectors a two-stage search
holds; for exact search the fp16 vectors it scans), search p50/p95 over the queries (after
one warm-up query, so memory maps and RAM caches are warm), for two-stage settings also
``--exact`` on the same index, recall@10 of the planted pages, and overlap@10 with exact fp16
search on the same corpus, and the MaxSim kernel calls a query makes. Pages are added in
commits of ``--commit-pages`` (the CLI's default, 16), so the index has the segments a real one
has. Two-stage settings are also timed with queries of each ``--query-tokens`` count, with the
share of time in the candidate stage and in the rerank. Qdrant Edge runs at 10k pages and below
only (its exact multivector query is several times slower than ours; 100k would take hours).
With ``--bundle``, a second, small corpus: the bundle's own encodings of rendered pages (random
weights: only overlap@10 with exact means anything there; two-stage settings rerank only k = 10
candidates there).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import scoring
from runtime.cli.args import DEFAULT_COMMIT_PAGES
from runtime.stores.base import PageRecord
from runtime.stores.local.index import Index

IDENTITY = {"bundle_path": "-", "bundle_manifest_sha256": "0" * 64, "bundle_model": "synthetic",
            "bundle_random_weights": "true", "precision": "fp32", "dim": "128"}  # fmt: skip
DIM, GRID, TEXT_ROWS, Q_TOKENS = 128, 16, 10, 20
LAYOUT = ((TEXT_ROWS, GRID, GRID),)

# name -> (store kind, compact, keep originals, search kwargs)
SETTINGS: dict[str, tuple[str, str | None, bool, dict]] = {
    "exact-fp16": ("local", None, True, {}),
    "int8-only": ("local", "int8", False, {}),
    "binary-2stage": ("local", "binary", True, {"rerank": 100}),
    "rowcol-2stage": ("local", "rowcol", True, {"rerank": 100}),
    "rowcol-only": ("local", "rowcol", False, {}),
    "pool12-2stage": ("local", "pool:12", True, {"rerank": 100}),
    "pool12-only": ("local", "pool:12", False, {}),
    "qdrant-edge-exact": ("qdrant-edge", None, True, {}),
    "qdrant-edge-rowcol-2stage": ("qdrant-edge", "rowcol", True, {"rerank": 100}),
}
QDRANT_MAX_PAGES = 10_000
BUILT = ".bench-built.json"  # in a --keep index: it was built completely, and how long that took


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Corpus:
    """A deterministic structured corpus: ``pages(start, n)`` regenerates any slice."""

    def __init__(self, n_pages: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n = n_pages
        self.seed = seed
        self.template = _unit(rng.standard_normal((4, DIM)))
        self.background = _unit(rng.standard_normal((6, DIM)))
        self.topics = _unit(rng.standard_normal((max(64, n_pages // 10), DIM)))

    def _rng(self, page: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, page])

    def page_topics(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self._rng(page)
        return rng.choice(len(self.topics), size=3, replace=False), _unit(rng.standard_normal(DIM))

    @staticmethod
    def _noise(rng: np.random.Generator, shape: tuple, norm: float) -> np.ndarray:
        """Gaussian noise whose rows have about ``norm`` length (per-dimension sigma norm/sqrt(d))."""
        return rng.standard_normal(shape) * (norm / np.sqrt(DIM))

    def page(self, i: int) -> np.ndarray:
        topics, detail = self.page_topics(i)
        rng = np.random.default_rng([self.seed, i, 1])
        text = self.template[rng.integers(0, len(self.template), TEXT_ROWS)] + self._noise(rng, (TEXT_ROWS, DIM), 0.5)
        grid = self.background[rng.integers(0, len(self.background), (GRID, GRID))]
        grid = grid + self._noise(rng, (GRID, GRID, DIM), 0.7)
        for t in topics:  # a block of content per topic, where the page's text or figure would be
            r, c, w = int(rng.integers(0, GRID - 4)), int(rng.integers(0, GRID - 5)), int(rng.integers(3, 6))
            grid[r : r + 4, c : c + w] = self.topics[t] + self._noise(rng, (4, w, DIM), 0.6)
        spots = rng.integers(0, GRID, (6, 2))
        grid[spots[:, 0], spots[:, 1]] = detail + self._noise(rng, (6, DIM), 0.5)
        return _unit(np.concatenate([text, grid.reshape(GRID * GRID, DIM)]))

    def records(self, batch: int = 500) -> Iterator[list[PageRecord]]:
        for start in range(0, self.n, batch):
            yield [PageRecord(f"/synthetic/{i:06d}.png", 1, f"h{i}", 0, self.page(i), LAYOUT)
                   for i in range(start, min(self.n, start + batch))]  # fmt: skip

    def queries(self, n: int, seed: int = 1, tokens: int = Q_TOKENS) -> tuple[list[np.ndarray], list[int]]:
        """``n`` queries of ``tokens`` tokens, each planted on one page: 80% of the tokens near its
        3 topics and its detail (in equal shares), the rest template tokens."""
        rng = np.random.default_rng([self.seed, seed, 99])
        planted = [int(p) for p in rng.choice(self.n, size=n, replace=False)]
        content = max(1, round(0.8 * tokens))
        shares = [content // 4 + (j < content % 4) for j in range(4)]
        out = []
        for p in planted:
            topics, detail = self.page_topics(p)
            near = [*(self.topics[t] for t in topics), detail]
            dirs = [d for d, m in zip(near, shares, strict=True) for _ in range(m)]
            dirs += [self.template[int(rng.integers(0, len(self.template)))] for _ in range(tokens - len(dirs))]
            out.append(_unit(np.stack(dirs) + self._noise(rng, (tokens, DIM), 0.6)))
        return out, planted


def _store(kind: str, root: Path, compact: str | None, keep: bool) -> Any:
    if kind == "local":
        return Index.create(root, IDENTITY, compact, keep_originals=keep)
    from runtime.stores.qdrant_edge import QdrantEdgeStore

    return QdrantEdgeStore.open(root, IDENTITY, compact, keep)


def _ram_bytes(store: Any, kind: str) -> int:
    if kind != "local":
        return -1  # Qdrant Edge keeps its own caches; not separable from outside
    info = store.info()
    return int(info["compact_bytes_in_ram"]) if store.compaction else int(info["rows"]) * DIM * 2


def _disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


class KernelCalls:
    """Counts the MaxSim kernels' calls (``runtime.scoring.run_max``, and ``run_codes`` of the
    candidate stage) while it is entered."""

    NAMES = ("run_max", "run_codes")

    def __enter__(self) -> KernelCalls:
        self.calls, self._real = 0, {name: getattr(scoring, name) for name in self.NAMES}

        def counting(real: Any) -> Any:
            def counted(*args: Any, **kwargs: Any) -> np.ndarray:
                self.calls += 1
                return real(*args, **kwargs)

            return counted

        for name, real in self._real.items():
            setattr(scoring, name, counting(real))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, real in self._real.items():
            setattr(scoring, name, real)


def _by_tokens(store: Any, token_queries: dict[int, list[np.ndarray]], kwargs: dict) -> dict[str, Any]:
    """p50/p95 per query-token count, and the share of time in each stage of a local index."""
    out = {}
    for tokens, qs in token_queries.items():
        times, stages = [], []
        store.search([qs[0]], k=10, **kwargs)
        for q in qs:
            t = time.perf_counter()
            store.search([q], k=10, **kwargs)
            times.append(time.perf_counter() - t)
            stages.append(dict(getattr(getattr(store, "scanner", None), "timings", {})))
        ms = np.array(times) * 1e3
        row = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}
        total = sum(times)
        for stage in ("candidate", "rerank"):
            if stages and all(stage in st for st in stages):
                row[f"{stage}_share"] = sum(st[stage] for st in stages) / total
        out[str(tokens)] = row
    return out


def run_setting(name: str, corpus_records: Callable[[], Iterator[list[PageRecord]]], queries: list[np.ndarray],
                planted: list[int] | None, exact_top: list[list[str]] | None, tmp: Path,
                names: list[str], rerank: int | None = None,
                token_queries: dict[int, list[np.ndarray]] | None = None, kept: Path | None = None,
                ) -> tuple[dict[str, Any], list[list[str]]]:  # fmt: skip
    kind, compact, keep, kwargs = SETTINGS[name]
    if rerank is not None and "rerank" in kwargs:
        kwargs = {**kwargs, "rerank": rerank}
    kept = kept if kind == "local" else None  # only local indexes are reopened
    root = (kept or tmp) / name
    marker = root / BUILT
    if kept is not None and marker.is_file():  # built by an earlier run: measure it again
        build = float(json.loads(marker.read_text())["build_s"])
        store = Index.open(root)
    else:
        shutil.rmtree(root, ignore_errors=True)  # a build that stopped half way
        t0 = time.perf_counter()
        store = _store(kind, root, compact, keep)
        with store.writer():
            for recs in corpus_records():
                store.add_batch(recs)
        build = time.perf_counter() - t0
        if kept is not None:
            marker.write_text(json.dumps({"build_s": build}) + "\n")
    store.search([queries[0]], k=10, **kwargs)  # warm: maps, page cache, the kernel's session
    times, tops = [], []
    with KernelCalls() as kernel:
        for q in queries:
            t = time.perf_counter()
            hits = store.search([q], k=10, **kwargs)[0]
            times.append(time.perf_counter() - t)
            tops.append([h.path for h in hits])
    exact_times = []
    if compact and keep and kind == "local":  # the target's ratio: --exact on this same index
        for q in queries[: max(3, len(queries) // 4)]:
            t = time.perf_counter()
            store.search([q], k=10, exact=True)
            exact_times.append(time.perf_counter() - t)
    out: dict[str, Any] = {
        "store": kind, "compact": compact or "none", "originals": "kept" if keep else "dropped", **kwargs,
        "build_s": round(build, 1), "disk_bytes": _disk_bytes(root), "ram_bytes": _ram_bytes(store, kind),
        "search_p50_ms": float(np.percentile(np.array(times) * 1e3, 50)),
        "search_p95_ms": float(np.percentile(np.array(times) * 1e3, 95)),
        "kernel_calls_per_query": kernel.calls / len(queries) if kind == "local" else None,
    }  # fmt: skip
    if token_queries and compact and kind == "local":
        out["by_query_tokens"] = _by_tokens(store, token_queries, kwargs)
    if exact_times:
        out["exact_same_index_p50_ms"] = float(np.percentile(np.array(exact_times) * 1e3, 50))
        out["speedup_vs_exact_same_index"] = out["exact_same_index_p50_ms"] / out["search_p50_ms"]
    if planted is not None:
        out["recall_at_10"] = float(np.mean([names[p] in top for p, top in zip(planted, tops, strict=True)]))
    if exact_top is not None:
        out["overlap_at_10"] = float(np.mean([len(set(a) & set(b)) / max(1, min(10, len(b)))
                                              for a, b in zip(tops, exact_top, strict=True)]))  # fmt: skip
    store.close()
    if kept is None:
        shutil.rmtree(root, ignore_errors=True)  # one index on disk at a time (100k pages: ~7 GB each)
    return out, tops


def run_corpus(label: str, records: Callable[[], Iterator[list[PageRecord]]], n_pages: int, queries: list[np.ndarray],
               planted: list[int] | None, names: list[str], settings: list[str], tmp: Path,
               rerank: int | None = None, qdrant_max_pages: int = QDRANT_MAX_PAGES,
               token_queries: dict[int, list[np.ndarray]] | None = None,
               kept: Path | None = None) -> dict[str, Any]:  # fmt: skip
    rows: dict[str, Any] = {}
    exact_top = None
    for name in ["exact-fp16", *[s for s in settings if s != "exact-fp16"]]:
        if SETTINGS[name][0] == "qdrant-edge" and n_pages > qdrant_max_pages:
            continue
        print(f"[{label}] {name} ...", flush=True)
        try:
            rows[name], tops = run_setting(name, records, queries, planted, exact_top, tmp, names, rerank,
                                           token_queries, kept)  # fmt: skip
        except Exception as exc:  # one setting failing (e.g. scipy missing) must not lose the others
            rows[name] = {"error": " ".join(str(exc).split())}
            continue
        if name == "exact-fp16":
            exact_top = tops
            rows[name]["overlap_at_10"] = 1.0
        r = rows[name]
        print(f"   build {r['build_s']} s, p50 {r['search_p50_ms']:.1f} ms, recall@10 {r.get('recall_at_10', '-')}, "
              f"overlap@10 {r.get('overlap_at_10', '-')}, kernel calls {r.get('kernel_calls_per_query')}, "
              f"{r.get('by_query_tokens', '')}", flush=True)  # fmt: skip
    fp16 = rows["exact-fp16"]["ram_bytes"]
    for r in rows.values():
        if "ram_bytes" in r and r["ram_bytes"] >= 0:
            r["ram_vs_fp16"] = r["ram_bytes"] / fp16
        if "search_p50_ms" in r:
            r["speedup_vs_exact"] = rows["exact-fp16"]["search_p50_ms"] / r["search_p50_ms"]
    return {"pages": n_pages, "queries": len(queries), "settings": rows}


def model_corpus(bundle: Path, n_pages: int) -> tuple[list[PageRecord], list[np.ndarray]]:
    """The bundle's own encodings of rendered pages, and of a few queries."""
    from export.demo import SAMPLE_PAGES, render_page
    from export.grid import synthetic_page
    from runtime import ColLFM2

    model = ColLFM2.from_pretrained(bundle)
    images = [render_page(lines) for lines in SAMPLE_PAGES.values()]
    images += [synthetic_page(512, 512, seed=s) for s in range(n_pages - len(images))]
    records = []
    from runtime.ingest.sources import image_sources
    from runtime.ingest.stream import encode_stream

    for i, item in enumerate(encode_stream(model, model.processor, image_sources(images))):
        records.append(PageRecord(f"/rendered/{i:03d}.png", 1, f"r{i}", 0, item.embeddings, item.layout))
    queries = list(model.embed_queries(["total amount due", "quarterly revenue", "table of contents", "net income",
                                        "shipping address", "signature and date"]))  # fmt: skip
    return records, queries


def _ordered(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    # by size, the model's own encodings last, whichever run (--append) measured them first
    return sorted(result["corpora"].items(), key=lambda kv: (kv[0] == "model-encodings", kv[1]["pages"]))


def table(result: dict[str, Any]) -> str:
    lines = [f"# Search at scale ({result['machine']['cpu']}, {result['machine']['cores']} cores)", "",
             "Structured synthetic corpus (benchmarks/bench_scale.py). Ratios are within one run.", ""]  # fmt: skip
    for label, corpus in _ordered(result):
        lines += [f"## {label}: {corpus['pages']:,} pages, {corpus['queries']} queries", "",
                  "| setting | build s | disk MB | RAM MB (x fp16) | search p50 / p95 ms | x exact "
                  "| x --exact, same index | recall@10 | overlap@10 | kernel calls / query |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in corpus["settings"].items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | | | | | |")
                continue
            ram = "-" if r["ram_bytes"] < 0 else f"{r['ram_bytes'] / 1e6:,.0f} ({r['ram_vs_fp16']:.2f})"
            recall = f"{r['recall_at_10']:.2f}" if "recall_at_10" in r else "-"
            same = f"{r['speedup_vs_exact_same_index']:.1f}" if "speedup_vs_exact_same_index" in r else "-"
            mark = " †" if "exact_p50_ms_this_run" in r else ""
            lines.append(f"| {name}{mark} | {r['build_s']} | {r['disk_bytes'] / 1e6:,.0f} | {ram} | "
                         f"{r['search_p50_ms']:.1f} / {r['search_p95_ms']:.1f} | {r['speedup_vs_exact']:.1f} | "
                         f"{same} | {recall} | {r['overlap_at_10']:.2f} | {_calls(r)} |")  # fmt: skip
        tokens = [(name, r["by_query_tokens"]) for name, r in corpus["settings"].items() if "by_query_tokens" in r]
        if tokens:
            lines += ["", "| setting | query tokens | p50 / p95 ms | time in candidate / rerank |", "|---|---|---|---|"]
            for name, by in tokens:
                for t, row in by.items():
                    share = (f"{row['candidate_share']:.0%} / {row.get('rerank_share', 0):.0%}"
                             if "candidate_share" in row else "-")  # fmt: skip
                    lines.append(f"| {name} | {t} | {row['p50_ms']:.1f} / {row['p95_ms']:.1f} | {share} |")
        if any("exact_p50_ms_this_run" in r for r in corpus["settings"].values()):
            lines += ["", "† measured in a second run (`--append`); its x exact is against that run's own exact "
                      "search, overlap against that run's exact top 10."]  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


def _calls(r: dict[str, Any]) -> str:
    calls = r.get("kernel_calls_per_query")
    return "-" if calls is None else f"{calls:,.0f}"


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    corpora = [(k, v) for k, v in _ordered(result) if k.startswith("synthetic")]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.5), squeeze=False)
    for ax, (label, corpus) in zip(axes[0], corpora, strict=True):
        for name, r in corpus["settings"].items():
            if "search_p50_ms" in r:
                # overlap on y: planted recall was 1.0 for every setting here and tells them apart less
                ax.scatter(r["search_p50_ms"], r["overlap_at_10"], s=40)
                ax.annotate(f"{name} (recall {r.get('recall_at_10', float('nan')):.2f})",
                            (r["search_p50_ms"], r["overlap_at_10"]), fontsize=7, rotation=20)  # fmt: skip
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("search p50, ms (log)")
        ax.set_ylabel("overlap@10 with exact search")
        ax.set_title(f"{label}: {corpus['pages']:,} pages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--bundle", type=Path, help="also the bundle's own encodings of rendered pages")
    ap.add_argument("--model-pages", type=int, default=40)
    ap.add_argument(
        "--commit-pages",
        type=int,
        default=DEFAULT_COMMIT_PAGES,
        help=f"pages per commit, so per segment (default {DEFAULT_COMMIT_PAGES}, as index add/import)",
    )
    ap.add_argument("--query-tokens", type=int, nargs="*", default=[4, 16, 32],
                    help="two-stage settings are also timed with queries of these token counts")  # fmt: skip
    ap.add_argument("--tmp", type=Path, default=None, help="where indexes are built (needs ~8 GB at 100k pages)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the local indexes built in this folder, and measure them again on the next run "
                    "instead of building them (~60 GB for 20k + 100k + 300k pages)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--name", default="scale")
    ap.add_argument(
        "--qdrant-max-pages",
        type=int,
        default=QDRANT_MAX_PAGES,
        help=f"largest corpus Qdrant Edge runs on (default {QDRANT_MAX_PAGES:,}: ~11 min a build at 100k)",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="add to the existing results of --name (e.g. Qdrant at 100k in a second run)",
    )
    a = ap.parse_args(argv)
    import os

    from runtime.cpu import cpu_class, cpu_name

    result: dict[str, Any] = {
        "schema": "collfm2-edge-scale/1",
        "commit_pages": a.commit_pages,
        "machine": {"cpu": cpu_name(), "cpu_class": cpu_class(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "corpora": {},
    }  # fmt: skip

    previous = a.out / f"{a.name}.json"
    if a.append and previous.is_file():
        result["corpora"] = json.loads(previous.read_text())["corpora"]

    def merge(label: str, got: dict[str, Any]) -> None:
        if label not in result["corpora"]:
            result["corpora"][label] = got
            return
        # Appended settings keep their ratios to this run's own exact search (same-run ratios).
        exact = got["settings"].pop("exact-fp16")
        for r in got["settings"].values():
            r["exact_p50_ms_this_run"] = exact["search_p50_ms"]
        result["corpora"][label]["settings"].update(got["settings"])

    def write() -> str:  # after each corpus: a long run that stops later keeps what it measured
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"{a.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        text = table(result)
        (a.out / f"{a.name}.md").write_text(text)
        return text

    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        for n in a.pages:
            corpus = Corpus(n)
            queries, planted = corpus.queries(a.queries)
            token_queries = {t: corpus.queries(a.queries, tokens=t)[0] for t in a.query_tokens}
            names = [f"/synthetic/{i:06d}.png" for i in range(n)]
            got = run_corpus(f"synthetic-{n}", lambda c=corpus: c.records(a.commit_pages), n, queries, planted, names,
                             a.settings, Path(tmp), qdrant_max_pages=a.qdrant_max_pages, token_queries=token_queries,
                             kept=a.keep / f"synthetic-{n}-c{a.commit_pages}" if a.keep else None)  # fmt: skip
            merge(f"synthetic-{n}", got)
            write()
        if a.bundle:
            records, queries = model_corpus(a.bundle, a.model_pages)
            merge("model-encodings", run_corpus(
                "model-encodings", lambda: iter([records]), len(records), queries, None,
                [r.path for r in records], a.settings, Path(tmp), rerank=10))  # fmt: skip
            # rerank 10 = k: with 100 every page of this small corpus would be reranked exactly
    text = write()
    plotted = plot(result, a.out / f"{a.name}.png")
    print(text)
    print(f"wrote {a.out / a.name}.json, .md" + (", .png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
