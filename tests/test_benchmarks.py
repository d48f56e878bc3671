"""The benchmark runs on the tiny preset in well under a minute; its JSON schema is checked, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_benchmark_json_schema(tiny_bundle: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks", "--model", "tiny", "--bundle", str(tiny_bundle), "--runs", "1",
           "--warmup", "0", "--maxsim-pages", "50", "--threads", "2", "--out-dir", str(tmp_path),
           "--batch-sizes", "1,2", "--name", "t", "--bf16", "on"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["schema"] == "collfm2-edge-benchmark/1"
    for key in ("cpu", "cpu_class", "cores", "threads", "torch", "onnxruntime", "gpu"):
        assert key in r["machine"]
    assert r["gemm_peak_gflops"] > 0 and r["gemm_peaks"]["int8"] > 0 and r["copy_gbs"] > 0 and r["peak_rss_mb"] > 0
    assert r["read_gbs"] > 0 and set(r["text_weight_bytes"]) >= {"fp32", "int8"}
    for name in ("ort-cpu-fp32", "ort-cpu-int8", "torch-eager-fp32"):
        q = r["ratios"][name]["query_20"]
        assert q["floor_ms"] > 0
        assert q["vs_floor"] == pytest.approx(r["backends"][name]["query_20"]["p50_ms"] / q["floor_ms"])
    backends = r["backends"]
    # --bf16 on: the branch a bf16 CPU takes by itself runs on every CPU, so no class can surprise the suite.
    assert {"torch-eager-fp32", "torch-eager-bf16"} <= set(backends)
    assert {"ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8"} <= set(backends)
    # OpenVINO beside ONNX Runtime in the same run (its bf16 row only where the CPU has bf16).
    assert {"ov-cpu-fp32", "ov-cpu-int8"} <= set(backends) and {"ov-cpu-fp32", "ov-cpu-int8"} <= set(r["fidelity"])
    assert r["fidelity"]["ov-cpu-fp32"]["pages"]["worst_cos"] > 0.9999
    for stages in backends.values():
        for page in ("512x512", "A4-150dpi"):
            for stage in ("vision", "merge", "text", "page_end_to_end"):
                assert set(stages[page][stage]) == {"p50_ms", "p95_ms", "mean_ms", "runs"}
        assert {"query_20", "query_64"} <= set(stages)
    for name in ("ort-cpu-fp32", "ort-cpu-int8"):
        assert r["ratios"][name]["512x512"]["page_end_to_end"]["vs_eager_fp32"] > 0
        assert "fraction_of_gemm_peak" in r["ratios"][name]["512x512"]["vision"]
        f = r["fidelity"][name]
        assert {"mean_cos", "worst_cos", "max_abs", "rows"} <= set(f["pages"]) and 0 <= f["top5_agreement"] <= 1
    for name in backends:
        assert set(r["throughput_512x512"][name]) == {"1", "2"}
        best = r["ratios"]["throughput_512x512"][name]
        assert best["best_batch"] in (1, 2) and best["pages_per_s"] == max(
            v["pages_per_s"] for v in r["throughput_512x512"][name].values()
        )
    ms = r["maxsim"]
    assert {"ours", "naive_loop", "seed_score_multi_vector", "index_search"} <= set(ms)
    assert r["ratios"]["maxsim"]["ours_gflops"] > 0
    assert (tmp_path / "t.md").read_text().startswith("# collfm2-edge benchmark")


def test_cuda_benchmark_json_schema(tmp_path: Path) -> None:
    """The CUDA reference benchmark's code path, run with its "device" backends on the CPU."""
    cmd = [sys.executable, "-m", "benchmarks.bench_cuda", "--model", "tiny", "--device", "cpu", "--runs", "1",
           "--cpu-runs", "1", "--warmup", "0", "--batch-sizes", "1,2", "--threads", "2", "--out-dir", str(tmp_path),
           "--name", "c"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["schema"] == "collfm2-edge-benchmark-cuda/1" and r["config"]["random_weights"] is True
    assert set(r["backends"]) == {"torch-eager-fp32", "torch-cpu-fp32", "torch-cpu-bf16"}
    for name, stages in r["backends"].items():
        for stage in ("vision", "merge", "text", "page_end_to_end"):
            assert r["ratios"][name]["A4-150dpi"][stage]["vs_eager_fp32"] > 0
        assert {"query_20", "query_64"} <= set(stages)
        assert all(v["pages_per_s"] > 0 for v in r["throughput_512x512"][name].values())
    assert set(r["throughput_512x512"]["torch-cpu-bf16"]) == {"1", "2"}
    assert r["flops"]["A4-150dpi"]["vision"] > r["flops"]["512x512"]["vision"] > 0
    # The same weights on the same device in fp32: identical to the reference.
    assert r["fidelity"]["torch-cpu-fp32"]["pages"]["worst_cos"] > 0.99999
    assert 0.9 < r["fidelity"]["torch-cpu-bf16"]["pages"]["worst_cos"] <= 1.0
    assert (tmp_path / "c.md").read_text().startswith("# collfm2-edge PyTorch reference on cpu")


def test_cuda_benchmark_refuses_without_cuda() -> None:
    import os

    # No visible device, on a CUDA host too: the refusal is what is tested, everywhere.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_cuda", "--model", "tiny"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1], env=env)  # fmt: skip
    assert res.returncode != 0 and "no CUDA device here" in res.stderr and "Traceback" not in res.stderr


def test_rss_benchmark_json(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "rss.json"
    cmd = [sys.executable, "benchmarks/bench_rss.py", "--bundle", str(tiny_bundle), "--precisions", "fp32,int8",
           "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    for p in ("fp32", "int8"):
        steps = r[p]["steps"]
        assert list(steps) == ["start", "imported", "loaded", "query", "page_512", "page_a4"]
        assert r[p]["files_mb"] > 0 and r[p]["peak_rss_mb"] >= r[p]["peak_rss_mb_query_and_512"] > 0
        assert r[p]["ratio"] == r[p]["peak_rss_mb"] / r[p]["files_mb"]
        assert 0 < r[p]["peak_anon_mb"] <= r[p]["peak_rss_mb"]


def test_rss_benchmark_in_a_memory_limit(tiny_bundle: Path, tmp_path: Path) -> None:
    """``--limit-mb``: a child that fits finishes, one that does not is recorded as killed."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    memcg = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file() or (
        v2.is_file() and "memory" in v2.read_text().split()
    )
    if os.geteuid() != 0 or not memcg:
        pytest.skip("needs root and a memory cgroup")
    for limit, finished in ((2048, True), (40, False)):
        out = tmp_path / f"rss-{limit}.json"
        cmd = [sys.executable, "benchmarks/bench_rss.py", "--bundle", str(tiny_bundle), "--precisions", "fp32",
               "--limit-mb", str(limit), "--out", str(out)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 0, res.stderr[-3000:]
        lim = json.loads(out.read_text())["fp32"]["limited"]
        assert lim["limit_mb"] == limit and lim["finished"] is finished and lim["seconds"] > 0, lim
        assert (lim["steps"] is not None) is finished
        assert f"{limit} MB: {'finished' if finished else 'killed'}" in res.stdout


def test_rss_benchmark_of_openvino(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "rss.json"
    cmd = [sys.executable, "benchmarks/bench_rss.py", "--bundle", str(tiny_bundle), "--precisions", "fp32,int8",
           "--engine", "ov-cpu", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "COLLFM2_OV_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
                         env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r) == {"ov-cpu-fp32", "ov-cpu-int8"}
    # int8: weight-only int8 graphs and the int8 precision's fp16 table.
    assert r["ov-cpu-int8"]["files_mb"] < r["ov-cpu-fp32"]["files_mb"]


def test_benchmark_refuses_an_unknown_page_size() -> None:
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--pages", "A3"], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert res.returncode == 2 and "unknown page size A3; choose from 512x512, A4-150dpi" in res.stderr


def test_scale_benchmark_json(tiny_bundle: Path, tmp_path: Path) -> None:
    """bench_scale on a small corpus: every setting measured, the planted pages found, two-stage
    equal to exact where the rerank covers the corpus' candidates, and the model corpus present."""
    cmd = [sys.executable, "benchmarks/bench_scale.py", "--pages", "300", "--queries", "4", "--settings",
           "exact-fp16", "int8-only", "rowcol-2stage", "pool12-2stage", "qdrant-edge-rowcol-2stage",
           "--bundle", str(tiny_bundle), "--model-pages", "4", "--tmp", str(tmp_path), "--out", str(tmp_path),
           "--name", "s"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "s.json").read_text())
    assert set(r["corpora"]) == {"synthetic-300", "model-encodings"}
    rows = r["corpora"]["synthetic-300"]["settings"]
    assert set(rows) == {"exact-fp16", "int8-only", "rowcol-2stage", "pool12-2stage", "qdrant-edge-rowcol-2stage"}
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        assert row["search_p50_ms"] > 0 and row["disk_bytes"] > 0 and 0 <= row["overlap_at_10"] <= 1
    assert rows["exact-fp16"]["recall_at_10"] == 1.0  # the planted pages are findable
    assert rows["rowcol-2stage"]["ram_vs_fp16"] < 0.25 and "speedup_vs_exact_same_index" in rows["rowcol-2stage"]
    assert rows["pool12-2stage"]["overlap_at_10"] == 1.0  # 100 reranked of 300: the exact top 10 survive
    by = rows["pool12-2stage"]["by_query_tokens"]
    assert set(by) == {"4", "16", "32"} and all(0 < t["candidate_share"] + t["rerank_share"] <= 1 for t in by.values())
    assert r["commit_pages"] == 16 and rows["exact-fp16"]["kernel_calls_per_query"] >= 300 / 16  # a call per segment
    assert 1 <= rows["pool12-2stage"]["kernel_calls_per_query"] < rows["exact-fp16"]["kernel_calls_per_query"]
    assert "| rowcol-2stage |" in (tmp_path / "s.md").read_text()


def test_serve_benchmark_json(tiny_bundle: Path, tmp_path: Path) -> None:
    """bench_serve on the tiny bundle: every figure present, no request failed, the table written."""
    cmd = [sys.executable, "benchmarks/bench_serve.py", "--bundle", str(tiny_bundle), "--precision", "fp32",
           "--pages", "4", "--requests", "3", "--cold-runs", "1", "--clients", "1", "4", "--ingest-pages", "3",
           "--out", str(tmp_path), "--name", "s"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["pages"] == 4 and r["precision"] == "fp32" and r["random_weights"] is True
    for part in ("cold_cli", "in_process", "warm_http"):
        assert r[part]["p50_ms"] > 0
    assert r["warm_http_vs_in_process"] > 0 and r["cold_cli_vs_warm_http"] > 0
    for mode in ("batched", "one_query_per_call"):
        runs = r["concurrent"][mode]
        assert [c["clients"] for c in runs] == [1, 4] and all(c["errors"] == 0 and c["qps"] > 0 for c in runs)
    assert all(c["mean_batch"] == 1.0 for c in r["concurrent"]["one_query_per_call"])
    assert r["ingest"]["pages"] == 3 and r["ingest"]["failed"] == 0 and r["ingest"]["state"] == "done"
    assert "| HTTP, warm |" in (tmp_path / "s.md").read_text() and "Ingest: 3 pages" in (tmp_path / "s.md").read_text()
