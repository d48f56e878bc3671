"""``python -m benchmarks.retrieval``: NDCG, Recall and MRR on a local ViDoRe/BEIR-format dataset,
for each bundle precision and index setting side by side (and the PyTorch reference when torch
is installed).

    python -m benchmarks.retrieval --dataset DIR --bundle BUNDLE [--precision fp32,fp16,int8]
        [--settings exact rowcol pool:12 int8-only] [--rerank 100] [--model CKPT|PRESET | --no-reference]
        [--limit-queries N] [--out benchmarks/results] [--name NAME]
    python -m benchmarks.retrieval --make-mini DIR      # a small generated dataset (the tests use it)

A dataset is a folder in one of three layouts (``load_dataset`` finds which):

* **BEIR folder**: ``corpus.jsonl`` (``{"_id": "d1", "image": "images/d1.png"}``, image paths
  relative to the folder), ``queries.jsonl`` (``{"_id": "q1", "text": "..."}``) and
  ``qrels/test.tsv`` (``query-id <tab> corpus-id <tab> score``, with a header line).
* **BEIR parquet** (ViDoRe v2/v3 and MTEB's ViDoRe copies, as downloaded from the Hub):
  ``corpus/*.parquet`` (``corpus-id``, ``image`` as ``{bytes, path}``), ``queries/*.parquet``
  (``query-id``, ``query``), ``qrels/*.parquet`` (``query-id``, ``corpus-id``, ``score``).
* **ViDoRe v1 QA parquet** (``vidore/docvqa_test_subsampled`` and the other v1 sets): one table
  (``*.parquet`` or ``data/*.parquet``) of rows ``query``, ``image``, ``image_filename``; the
  corpus is every distinct ``image_filename``, queries are the distinct non-empty ``query``
  values, and a query's relevant pages are its rows' images (vidore-benchmark's QA evaluator).

Parquet needs pyarrow (``pip install 'collfm2-edge[retrieval]'``). Metrics follow trec_eval (as
pytrec_eval, which BEIR and MTEB use, computes them; tested against it): NDCG@k with linear gain
and log2 discount, Recall@k, MRR over the top 10, averaged over every query in the qrels.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cli.args import whole_number
from runtime.errors import UserError
from runtime.preprocess.text import has_visible_text

SCHEMA = "collfm2-edge-retrieval/1"
KS = (1, 5, 10)
DEFAULT_SETTINGS = ("exact", "rowcol", "pool:12")


class DatasetError(UserError):
    """The dataset folder is not in a layout this reads, or is inconsistent."""


@dataclass
class Dataset:
    name: str
    corpus: dict[str, Any]  # corpus-id -> image (a path or encoded bytes)
    queries: dict[str, str]  # query-id -> text
    qrels: dict[str, dict[str, int]]  # query-id -> {corpus-id: relevance}
    layout: str


# -- datasets --------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    """A text file's lines; a BOM is dropped (it would glue itself to the first id)."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (a BEIR folder has corpus.jsonl, queries.jsonl and qrels/)") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#x} at offset {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _jsonl(path: Path, fields: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line; each object must have ``fields`` (the
    first one an id: text or a number)."""
    out = []
    for n, line in enumerate(_lines(path), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise DatasetError(f"{path}:{n}: not JSON ({getattr(exc, 'msg', exc)})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{n}: not a JSON object")
            for f in fields:
                if not any(k in row for k in f.split("|")):
                    raise DatasetError(f"{path}:{n}: has no {f.replace('|', ' or ')!r}")
            out.append((n, row))
    return out


def _id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DatasetError(f"{where}: id {value!r} is not a non-empty text or number")
    return str(value)


def _unique(pairs: Iterable[tuple[str, Any, str]], what: str) -> dict[str, Any]:
    """(id, value, where) -> {id: value}; an id twice would silently overwrite the first."""
    out: dict[str, Any] = {}
    for key, value, where in pairs:
        if key in out:
            raise DatasetError(f"{where}: {what} id {key!r} appears twice")
        out[key] = value
    return out


def _query_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not has_visible_text(value):
        raise DatasetError(f"{where}: query text {value!r} is empty or not text; fix or drop the query")
    return value


def _relevance(text: str, where: str) -> int:
    """A qrels score: an integer grade, written ``2`` or ``2.0``."""
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: score {text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise DatasetError(f"{where}: score {text.strip()!r} is not a whole-number grade")
    return int(value)


def _parquet(paths: Sequence[Path]) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError("parquet datasets need pyarrow (pip install 'collfm2-edge[retrieval]')") from None
    rows: list[dict[str, Any]] = []
    for p in paths:
        try:
            rows += pq.read_table(p).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DatasetError(f"{p}: cannot be read as parquet ({exc})") from None
    return rows


def _image(value: Any, root: Path) -> Any:
    if isinstance(value, dict):  # the Hub's Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        return str(root / value)
    raise DatasetError(f"{root}: a corpus entry has no image (got {type(value).__name__})")


def _files(root: Path, part: str) -> list[Path]:
    return sorted((root / part).glob("*.parquet")) if (root / part).is_dir() else []


def load_dataset(path: str | Path) -> Dataset:
    """A dataset folder in any of the three layouts (module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected a ViDoRe/BEIR dataset)")
    if (root / "corpus.jsonl").is_file():
        cfile, qfile = root / "corpus.jsonl", root / "queries.jsonl"
        corpus = _unique(((_id(r["_id"], f"{cfile}:{n}"), _image(r.get("image") or r.get("file"), root), f"{cfile}:{n}")
                          for n, r in _jsonl(cfile, ["_id", "image|file"])), "corpus")  # fmt: skip
        queries = _unique(((_id(r["_id"], f"{qfile}:{n}"), _query_text(r["text"], f"{qfile}:{n}"), f"{qfile}:{n}")
                           for n, r in _jsonl(qfile, ["_id", "text"])), "query")  # fmt: skip
        tsvs = sorted((root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else [root / "qrels.tsv"]
        qrels: dict[str, dict[str, int]] = {}
        for tsv in tsvs:
            if not tsv.is_file():
                raise DatasetError(f"{root}: no qrels (qrels/test.tsv)")
            for n, line in enumerate(_lines(tsv)):
                if not line.strip():
                    continue  # blank lines (a trailing one above all) hold nothing
                parts = line.split("\t")
                if n == 0 and len(parts) == 3 and not parts[-1].strip().lstrip("-").replace(".", "", 1).isdigit():
                    continue  # header
                if len(parts) != 3:
                    raise DatasetError(f"{tsv}:{n + 1}: expected query-id, corpus-id, score")
                qrels.setdefault(parts[0], {})[parts[1]] = _relevance(parts[2], f"{tsv}:{n + 1}")
        layout = "beir-folder"
    elif _files(root, "corpus"):
        try:
            cdir, qdir = str(root / "corpus"), str(root / "queries")
            corpus = _unique(((_id(r["corpus-id"], cdir), _image(r["image"], root), cdir)
                              for r in _parquet(_files(root, "corpus"))), "corpus")  # fmt: skip
            queries = _unique(((_id(r["query-id"], qdir), _query_text(r["query"], f"{qdir} {r['query-id']!r}"), qdir)
                               for r in _parquet(_files(root, "queries"))), "query")  # fmt: skip
            qrels = {}
            for r in _parquet(_files(root, "qrels")):
                where = f"{root / 'qrels'} ({r['query-id']!r}, {r['corpus-id']!r})"
                qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = _relevance(str(r["score"]), where)
        except KeyError as exc:
            raise DatasetError(f"{root}: a parquet table lacks the column {exc.args[0]!r}") from None
        layout = "beir-parquet"
    else:
        tables = sorted(root.glob("*.parquet")) or _files(root, "data")
        if not tables:
            raise DatasetError(f"{root}: no corpus.jsonl, corpus/*.parquet or *.parquet (see benchmarks/retrieval.py)")
        corpus, queries, qrels = {}, {}, {}
        ids: dict[str, str] = {}
        for r in _parquet(tables):
            if "image_filename" not in r or "image" not in r:
                raise DatasetError(f"{root}: a ViDoRe v1 table needs image and image_filename columns")
            cid = str(r["image_filename"])
            corpus.setdefault(cid, _image(r["image"], root))
            text = r.get("query")
            if isinstance(text, str) and has_visible_text(text):  # rows without a question are corpus only
                qid = ids.setdefault(text, f"q{len(ids)}")
                queries[qid] = text
                qrels.setdefault(qid, {})[cid] = 1
        layout = "vidore-v1-parquet"
    unknown = sorted({c for rel in qrels.values() for c in rel} - set(corpus))
    if unknown:
        raise DatasetError(f"{root}: qrels name {len(unknown)} page(s) not in the corpus, e.g. {unknown[0]!r}")
    if not corpus or not queries:
        raise DatasetError(f"{root}: empty corpus or no queries")
    missing = [c for c, img in corpus.items() if isinstance(img, str) and not Path(img).is_file()]
    if len(missing) == len(corpus):
        raise DatasetError(f"{root}: none of the {len(corpus)} corpus images exists (e.g. {corpus[missing[0]]})")
    return Dataset(root.name, corpus, queries, qrels, layout)


MINI = [
    ("invoice", ["INVOICE #2024-117", "Bill to: Example GmbH", "Total amount due: 147.00 EUR"], "total amount due"),
    ("revenue", ["Quarterly revenue report", "Q1 12.4  Q2 13.9", "Revenue grew every quarter."], "quarterly revenue"),
    ("contents", ["Table of contents", "1. Introduction .... 1", "2. Methods .... 4"], "table of contents"),
    ("shipping", ["Shipping label", "Ship to: 12 Harbour Road", "Weight: 2.4 kg"], "shipping address"),
    ("minutes", ["Meeting minutes", "Attendees: A. Berg, C. Diaz", "Next meeting: 4 May"], "who attended the meeting"),
    ("recipe", ["Apple cake", "250 g flour, 3 apples", "Bake 40 min at 180 C"], "how long to bake the cake"),
    ("payslip", ["Payslip March", "Gross salary 3,200.00", "Net pay 2,310.55"], "net pay in march"),
    ("timetable", ["Bus timetable line 7", "Depart 07:15 08:15 09:15", "Sundays no service"], "bus on sunday"),
]


def make_mini(out: str | Path) -> Path:
    """A small dataset in the BEIR folder layout: rendered pages with distinct text, one query per
    page (two relevant pages for the last query, graded 2 and 1, so NDCG's gains matter)."""
    from export.demo import render_page

    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, (name, lines, query) in enumerate(MINI):
        render_page(lines).save(root / "images" / f"{name}.png")
        corpus.append({"_id": name, "image": f"images/{name}.png"})
        queries.append({"_id": f"q{i}", "text": query})
        qrels.append(f"q{i}\t{name}\t1")
    queries.append({"_id": "q-money", "text": "how much money"})
    qrels += ["q-money\tpayslip\t2", "q-money\tinvoice\t1"]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return root


# -- metrics ---------------------------------------------------------------------------------


def evaluate(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], ks: Iterable[int] = KS) -> dict[str, float]:
    """Mean NDCG@k, Recall@k (each k) and MRR@10 of ranked page ids per query, over every query
    in ``qrels``, as pytrec_eval averages them (BEIR, MTEB): a query without a relevant page, or
    without a ranking (trec_eval ``-c``), scores 0."""
    ks = tuple(ks)
    sums = dict.fromkeys([f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["mrr@10"], 0.0)
    judged = list(qrels)
    for q in judged:
        rel = qrels[q]
        ranked = run.get(q, [])
        gains = [max(rel.get(doc, 0), 0) for doc in ranked]
        ideal = sorted((v for v in rel.values() if v > 0), reverse=True)
        n_rel = len(ideal)
        if not n_rel:
            continue
        for k in ks:
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"recall@{k}"] += sum(1 for g in gains[:k] if g > 0) / n_rel
        first = next((i for i, g in enumerate(gains[:10]) if g > 0), None)
        sums["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
    return {name: (total / len(judged) if judged else float("nan")) for name, total in sums.items()}


# -- runs ------------------------------------------------------------------------------------


def parse_setting(text: str) -> tuple[str | None, bool]:
    """``exact`` -> (None, True); ``KIND`` -> two-stage over KIND; ``KIND-only`` -> originals dropped."""
    from runtime.stores.compact import Compaction

    if text == "exact":
        return None, True
    kind, only = (text[:-5], True) if text.endswith("-only") else (text, False)
    Compaction.parse(kind)  # one-line error for a bad kind
    return kind, not only


def encode_corpus(model: Any, ds: Dataset) -> tuple[list[Any], float, list[str]]:
    """Every corpus page through the runtime: (PageRecords, seconds, failures)."""
    from runtime.ingest.sources import Failed, PageSource
    from runtime.ingest.stream import Encoded, encode_stream
    from runtime.stores.base import PageRecord

    sources = [PageSource(cid, 1, f"corpus:{cid}", 0, lambda img=img: img) for cid, img in ds.corpus.items()]
    records, failures = [], []
    t = time.perf_counter()
    for item in encode_stream(model, model.processor, sources):
        if isinstance(item, Encoded):
            src = item.source
            records.append(PageRecord(src.path, 1, src.content_hash, 0, item.embeddings, item.layout))
        elif isinstance(item, Failed):
            failures.append(item.message)
    return records, time.perf_counter() - t, failures


def search_setting(records: list[Any], identity: dict[str, str], query_rows: list[np.ndarray], setting: str,
                   k: int, rerank: int | None, tmp: Path) -> tuple[list[list[str]], float]:  # fmt: skip
    """Rankings (page ids, best first) of each query in an index of ``setting``, and mean ms/query."""
    from runtime.stores.local.index import Index

    compact, keep = parse_setting(setting)
    index = Index.create(tmp / setting.replace(":", "_"), identity, compact, keep_originals=keep)
    try:
        with index.writer():
            for i in range(0, len(records), 256):
                index.add_batch(records[i : i + 256])
        t = time.perf_counter()
        hits = [index.search([q], k=k, rerank=rerank)[0] for q in query_rows]
        ms = (time.perf_counter() - t) * 1e3 / max(1, len(query_rows))
    finally:
        index.close()
    return [[h.path for h in row] for row in hits], ms


def reference_run(model_spec: str, ds: Dataset, qids: list[str], processor: Any, k: int) -> dict[str, Any]:
    """The PyTorch reference (transformers' LFM2-VL + the head), exact MaxSim over every page."""
    import torch

    from export.checkpoint import load_model
    from export.reference import pick_device
    from runtime import score
    from runtime.preprocess.processor import collate_pages

    device, dtype = pick_device()
    ref = load_model(model_spec).model.to(device=device, dtype=dtype).eval()
    ids, pages = list(ds.corpus), []
    t = time.perf_counter()
    with torch.inference_mode():
        for cid in ids:
            try:
                pages += ref.encode(collate_pages([processor.process_image(ds.corpus[cid], name=cid)]))
            except UserError:  # reported by the runtime's pass already; never retrieved here either
                pages.append(np.zeros((0, 128), np.float32))
        queries = []
        texts = [ds.queries[q] for q in qids]
        for i in range(0, len(texts), 16):
            queries += ref.encode(processor.process_queries(texts[i : i + 16]))
    seconds = time.perf_counter() - t
    scores = score(queries, pages)
    run = {q: [ids[j] for j in np.argsort(-scores[n], kind="stable")[:k]] for n, q in enumerate(qids)}
    return {"run": run, "device": f"{device} {str(dtype).replace('torch.', '')}", "encode_s": seconds}


def run_dataset(a: argparse.Namespace, path: str) -> dict[str, Any]:
    """One dataset: every precision x setting, and the reference."""
    from runtime import ColLFM2
    from runtime.stores.base import bundle_identity

    ds = load_dataset(path)
    qids = sorted(q for q in ds.queries if q in ds.qrels)[: a.limit_queries or None]
    if not qids:
        raise DatasetError(f"{path}: no query has qrels")
    settings = list(a.settings)
    k = max(max(KS), 10)
    result: dict[str, Any] = {
        "dataset": {"name": ds.name, "path": str(Path(path).resolve()), "layout": ds.layout,
                    "pages": len(ds.corpus), "queries": len(qids)},
        "results": {},
    }  # fmt: skip
    qrels = {q: ds.qrels[q] for q in qids}
    processor = None
    with tempfile.TemporaryDirectory(prefix="collfm2-retrieval-") as tmp:
        for precision in a.precision.split(","):
            model = ColLFM2.from_pretrained(a.bundle, precision=precision, threads=a.threads)
            processor = model.processor
            result["bundle"] = {"path": str(Path(a.bundle).resolve()), "random_weights": model.bundle.random_weights,
                                "source": model.bundle.manifest["source"]}  # fmt: skip
            print(f"[retrieval] {ds.name} {precision}: encoding {len(ds.corpus)} pages, {len(qids)} queries ...",
                  flush=True)  # fmt: skip
            records, seconds, failures = encode_corpus(model, ds)
            for msg in failures:
                print(f"[retrieval] error: {msg} (never retrieved)", file=sys.stderr)
            if not records:  # a table of zeros would read as a result
                raise DatasetError(f"{path}: no corpus page could be encoded ({len(failures)} failed)")
            query_rows = list(model.embed_queries([ds.queries[q] for q in qids]))
            identity = bundle_identity(model.bundle, precision)
            for setting in settings:
                rankings, ms = search_setting(records, identity, query_rows, setting, k, a.rerank,
                                              Path(tmp) / precision)  # fmt: skip
                metrics = evaluate(dict(zip(qids, rankings, strict=True)), qrels)
                result["results"][f"{precision}/{setting}"] = {
                    "precision": precision, "setting": setting, **metrics, "search_ms_per_query": ms,
                    "encode_s_per_page": seconds / max(1, len(ds.corpus)), "failed_pages": len(failures),
                }  # fmt: skip
                print(f"[retrieval] {ds.name} {precision}/{setting}: NDCG@5 {metrics['ndcg@5']:.4f}", flush=True)
    if not a.no_reference:
        try:
            import torch  # noqa: F401
        except ImportError:
            result["reference"] = {"skipped": "torch is not installed"}
        else:
            spec = a.model or _reference_spec(result["bundle"]["source"])
            if spec is None:
                result["reference"] = {"skipped": "the bundle's source is not on this machine; pass --model"}
            else:
                print(f"[retrieval] PyTorch reference ({spec}) ...", flush=True)
                ref = reference_run(spec, ds, qids, processor, k)
                result["reference"] = {"model": spec, "device": ref["device"], **evaluate(ref["run"], qrels),
                                       "encode_s_per_page": ref["encode_s"] / max(1, len(ds.corpus))}  # fmt: skip
    return result


def _reference_spec(source: dict[str, Any]) -> str | None:
    if source.get("kind") == "preset" and source.get("seed", 0) == 0:
        return str(source["preset"])
    path = source.get("path")
    return path if path and Path(path).is_dir() else None


NAMES = [f"ndcg@{k}" for k in (5, 10)] + [f"recall@{k}" for k in KS] + ["mrr@10"]


def mean_over(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """Each run's metrics averaged over datasets (the model card's ViDoRe figure is mean NDCG@5)."""
    out: dict[str, Any] = {}
    for key in datasets[0]["results"]:
        out[key] = {n: float(np.mean([d["results"][key][n] for d in datasets])) for n in NAMES}
    refs = [d.get("reference", {}) for d in datasets]
    if all("ndcg@5" in r for r in refs):
        out["reference"] = {n: float(np.mean([r[n] for r in refs])) for n in NAMES}
    return out


def _row(label: str, r: dict[str, Any], extra: str | None = None) -> str:
    cells = [label, *(f"{r[n]:.4f}" for n in NAMES), *([extra] if extra else [])]
    return "| " + " | ".join(cells) + " |"


def table(result: dict[str, Any]) -> str:
    lines = []
    if result.get("bundle", {}).get("random_weights"):
        lines += ["**Random weights: these numbers say nothing about the model.**", ""]
    head = ["| run | " + " | ".join(NAMES) + " | search ms/query | encode s/page |",
            "|---|" + "---|" * (len(NAMES) + 2)]  # fmt: skip
    for name, d in result["datasets"].items():
        info = d["dataset"]
        lines += [f"## {name} ({info['pages']} pages, {info['queries']} queries, {info['layout']})", "", *head]
        for key, r in d["results"].items():
            lines.append(_row(key, r, f"{r['search_ms_per_query']:.1f} | {r['encode_s_per_page']:.2f}"))
        ref = d.get("reference", {})
        if "ndcg@5" in ref:
            label = f"PyTorch reference ({ref['device']}), exact"
            lines.append(_row(label, ref, f"- | {ref['encode_s_per_page']:.2f}"))
        elif ref:
            lines.append(f"| PyTorch reference | skipped: {ref['skipped']} |")
        lines.append("")
    if "mean" in result:
        lines += [f"## Mean over {len(result['datasets'])} datasets", "",
                  "| run | " + " | ".join(NAMES) + " |", "|---|" + "---|" * len(NAMES)]  # fmt: skip
        for key, r in result["mean"].items():
            lines.append(_row("PyTorch reference, exact" if key == "reference" else key, r))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", nargs="+", help="dataset folder(s) (layouts: this module's docstring); with "
                    "several, the table ends with the mean over them")  # fmt: skip
    ap.add_argument("--bundle", help="ONNX bundle (python -m export --target onnx)")
    ap.add_argument("--precision", default="fp32", help="comma-separated bundle precisions (default fp32)")
    ap.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                    help="index settings: exact, a compact kind (two-stage: int8, binary, rowcol, hier:F, pool:K) "
                    "or KIND-only (originals dropped); default: exact rowcol pool:12")  # fmt: skip
    ap.add_argument("--rerank", type=int, default=None, help="two-stage candidates (default: the index's, 100)")
    ap.add_argument("--model", help="PyTorch reference: checkpoint dir or preset (default: the bundle's source)")
    ap.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--limit-queries", type=whole_number(0, " (all)"), default=0,
                    help="evaluate the first N judged queries only")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--name", help="output file stem (default retrieval-DATASET, or retrieval-N-datasets)")
    ap.add_argument("--make-mini", metavar="DIR", help="write the generated mini dataset to DIR and exit")
    a = ap.parse_args(argv)
    try:
        if a.make_mini:
            print(f"wrote {make_mini(a.make_mini)} ({len(MINI)} pages, {len(MINI) + 1} queries)")
            return 0
        if not a.dataset or not a.bundle:
            ap.error("--dataset and --bundle are required (or --make-mini DIR)")
        for s in a.settings:
            parse_setting(s)  # a typo fails before an hour of encoding
        for path in a.dataset:
            load_dataset(path)
        runs = [run_dataset(a, path) for path in a.dataset]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "bundle": runs[0].pop("bundle"), "rerank": a.rerank, "datasets": {}}  # fmt: skip
    for r in runs:
        r.pop("bundle", None)
        name, n = r["dataset"]["name"], 2
        while name in result["datasets"]:  # two folders of one name
            name, n = f"{r['dataset']['name']}-{n}", n + 1
        result["datasets"][name] = r
    if len(runs) > 1:
        result["mean"] = mean_over(runs)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.name or (f"retrieval-{next(iter(result['datasets']))}" if len(runs) == 1 else
                      f"retrieval-{len(runs)}-datasets")  # fmt: skip
    (a.out / f"{stem}.json").write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    text = table(result)
    (a.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {a.out / stem}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
