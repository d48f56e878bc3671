"""benchmarks.retrieval: metrics against pytrec_eval (trec_eval, what BEIR and MTEB use), the
three dataset layouts read alike, bad datasets refused in one line, and the evaluation end to end
on the generated mini dataset with the tiny bundle."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.retrieval import DatasetError, evaluate, load_dataset, main, make_mini

QRELS = {
    "q1": {"a": 1},
    "q2": {"b": 2, "c": 1, "z": 0},  # graded; z judged not relevant
    "q3": {"d": 1, "e": 1, "f": 1},
    "q4": {"g": 1},  # never retrieved within the run
    "q5": {"h": 3, "i": 1},
    "q6": {"x": 0},  # no relevant page: 0 in the mean, as pytrec_eval counts it
    "q7": {f"r{i}": 1 + i % 3 for i in range(12)},  # more relevant pages than k: the ideal is cut at k
}
RUN = {
    "q1": ["a", "b", "c"],
    "q2": ["z", "c", "y", "b", "w", "v", "u", "t", "s", "r", "p"],
    "q3": ["d", "x1", "x2", "x3", "x4", "x5", "e", "x6", "x7", "f", "x8"],
    "q4": ["a", "b"],
    "q5": ["i", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "h"],
    "q6": ["x"],
    "q7": ["r11", "n1", "r3", "r4", "n2", "r0", "r7", "n3", "r9", "r1", "r2", "r5"],
}


def test_metrics_by_hand() -> None:
    m = evaluate({"q": ["n", "r"]}, {"q": {"r": 1}})
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert m["recall@1"] == 0 and m["recall@5"] == 1 and m["mrr@10"] == 0.5
    assert evaluate({}, {"q": {"r": 1}})["ndcg@10"] == 0.0  # no ranking for a judged query
    graded = evaluate({"q": ["c", "b"]}, {"q": {"b": 2, "c": 1}})["ndcg@5"]
    assert graded == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_metrics_equal_pytrec_eval() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="make test installs pytrec-eval-terrier as the oracle")
    # strictly falling scores: trec_eval ranks by score (ties by doc id), so none may tie
    run = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in RUN.items()}
    measures = {"ndcg_cut.5,10", "recall.1,5,10", "recip_rank"}
    oracle = pytrec_eval.RelevanceEvaluator(QRELS, measures).evaluate(run)
    ours = evaluate(RUN, QRELS)
    judged = list(oracle)
    assert sorted(judged) == sorted(QRELS)
    for ours_name, theirs in (("ndcg@5", "ndcg_cut_5"), ("ndcg@10", "ndcg_cut_10"), ("recall@1", "recall_1"),
                              ("recall@5", "recall_5"), ("recall@10", "recall_10")):  # fmt: skip
        assert ours[ours_name] == pytest.approx(np.mean([oracle[q][theirs] for q in judged]), abs=1e-9), ours_name
    # MRR@10: trec_eval's recip_rank has no cut-off; cut the run at 10 for it
    cut = pytrec_eval.RelevanceEvaluator(QRELS, {"recip_rank"}).evaluate(
        {q: dict(list(r.items())[:10]) for q, r in run.items()}
    )
    assert ours["mrr@10"] == pytest.approx(np.mean([cut[q]["recip_rank"] for q in judged]), abs=1e-9)


def _to_parquet(mini: Path, out: Path, v1: bool) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ds = load_dataset(mini)
    image = {cid: {"bytes": Path(p).read_bytes(), "path": Path(p).name} for cid, p in ds.corpus.items()}
    out.mkdir()
    if v1:  # one row per (query, page); a page with no query still has a row
        rows = [(ds.queries[q], cid) for q, rel in ds.qrels.items() for cid, v in rel.items() if v > 0]
        rows.append((None, "contents"))
        table = pa.table({"query": [q for q, _ in rows], "image": [image[c] for _, c in rows],
                          "image_filename": [c for _, c in rows]})  # fmt: skip
        (out / "data").mkdir()
        pq.write_table(table, out / "data" / "test-00000-of-00001.parquet")
        return out
    for part, table in (
        ("corpus", pa.table({"corpus-id": list(image), "image": list(image.values())})),
        ("queries", pa.table({"query-id": list(ds.queries), "query": list(ds.queries.values())})),
        ("qrels", pa.table({"query-id": [q for q, r in ds.qrels.items() for _ in r],
                            "corpus-id": [c for r in ds.qrels.values() for c in r],
                            "score": [v for r in ds.qrels.values() for v in r.values()]})),
    ):  # fmt: skip
        (out / part).mkdir()
        pq.write_table(table, out / part / "test-00000-of-00001.parquet")
    return out


def test_three_layouts_read_alike(tmp_path: Path) -> None:
    mini = make_mini(tmp_path / "mini")
    folder = load_dataset(mini)
    assert folder.layout == "beir-folder" and len(folder.corpus) == 8 and len(folder.queries) == 9
    assert folder.qrels["q-money"] == {"payslip": 2, "invoice": 1}
    beir = load_dataset(_to_parquet(mini, tmp_path / "beir", v1=False))
    assert beir.layout == "beir-parquet" and beir.queries == folder.queries and beir.qrels == folder.qrels
    assert beir.corpus["invoice"] == Path(folder.corpus["invoice"]).read_bytes()
    v1 = load_dataset(_to_parquet(mini, tmp_path / "v1", v1=True))
    assert v1.layout == "vidore-v1-parquet" and set(v1.corpus) == set(folder.corpus)
    by_text = {v1.queries[q]: {c for c in rel} for q, rel in v1.qrels.items()}
    assert by_text == {folder.queries[q]: {c for c, v in rel.items() if v > 0} for q, rel in folder.qrels.items()}


def test_bad_datasets_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mini = make_mini(tmp_path / "mini")
    cases = []
    broken = tmp_path / "broken"
    shutil.copytree(mini, broken)
    (broken / "queries.jsonl").write_text('{"_id": "q0", "text": "x"}\n{not json\n')
    cases.append((broken, "not JSON"))
    stray = tmp_path / "stray"
    shutil.copytree(mini, stray)
    with (stray / "qrels" / "test.tsv").open("a") as f:
        f.write("q0\tmissing-page\t1\n")
    cases.append((stray, "not in the corpus"))
    noqrels = tmp_path / "noqrels"
    shutil.copytree(mini, noqrels)
    shutil.rmtree(noqrels / "qrels")
    cases.append((noqrels, "no qrels"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "no corpus.jsonl"))
    cases.append((tmp_path / "nothing", "not a folder"))
    for path, message in cases:
        with pytest.raises(DatasetError, match=message):
            load_dataset(path)
        assert main(["--dataset", str(path), "--bundle", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluation_end_to_end_on_the_mini_dataset(tiny_bundle: Path, tmp_path: Path) -> None:
    from runtime import ColLFM2, score

    mini = make_mini(tmp_path / "mini")
    out = tmp_path / "out"
    beir = _to_parquet(mini, tmp_path / "beir", v1=False)
    assert main(["--dataset", str(mini), str(beir), "--bundle", str(tiny_bundle), "--precision", "fp32,int8",
                 "--settings", "exact", "rowcol", "int8-only", "--out", str(out), "--name", "mini"]) == 0  # fmt: skip
    full = json.loads((out / "mini.json").read_text())
    assert list(full["datasets"]) == ["mini", "beir"] and full["bundle"]["random_weights"] is True
    result = full["datasets"]["mini"]
    assert set(result["results"]) == {f"{p}/{s}" for p in ("fp32", "int8") for s in ("exact", "rowcol", "int8-only")}
    assert result["dataset"]["pages"] == 8 and result["dataset"]["queries"] == 9
    # the same pages and queries from parquet: the same numbers, and so their mean
    for key, row in result["results"].items():
        assert full["datasets"]["beir"]["results"][key]["ndcg@5"] == pytest.approx(row["ndcg@5"], abs=1e-9)
        assert full["mean"][key]["ndcg@5"] == pytest.approx(row["ndcg@5"], abs=1e-9)
    table = (out / "mini.md").read_text()
    assert "Random weights" in table and "## Mean over 2 datasets" in table
    # the exact run equals MaxSim computed here, outside the index, on the same fp16 vectors
    ds = load_dataset(mini)
    model = ColLFM2.from_pretrained(tiny_bundle, precision="fp32")
    ids = list(ds.corpus)
    pages = [p.astype(np.float16) for p in model.embed_images([ds.corpus[c] for c in ids])]
    qids = sorted(ds.queries)
    scores = score(list(model.embed_queries([ds.queries[q] for q in qids])), pages)
    ranking = {q: [ids[j] for j in np.lexsort((np.arange(len(ids)), -scores[n]))] for n, q in enumerate(qids)}
    want = evaluate(ranking, ds.qrels)
    got = result["results"]["fp32/exact"]
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # with 8 pages, two-stage reranks every page: exactly the exact run
    assert {n: result["results"]["fp32/rowcol"][n] for n in want} == {n: got[n] for n in want}
    ref = result["reference"]
    if "skipped" not in ref:
        assert ref["model"] == "tiny" and 0 <= ref["ndcg@5"] <= 1
