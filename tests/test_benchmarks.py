"""The benchmark runs on the tiny preset in well under a minute; its JSON schema is checked, never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_benchmark_json_schema(tiny_bundle: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks", "--model", "tiny", "--bundle", str(tiny_bundle), "--runs", "1",
           "--warmup", "0", "--maxsim-pages", "50", "--threads", "2", "--out-dir", str(tmp_path),
           "--name", "t"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["schema"] == "collfm2-edge-benchmark/1"
    for key in ("cpu", "cores", "threads", "torch", "onnxruntime", "gpu"):
        assert key in r["machine"]
    assert r["gemm_peak_gflops"] > 0 and r["gemm_peaks"]["int8"] > 0 and r["copy_gbs"] > 0 and r["peak_rss_mb"] > 0
    backends = r["backends"]
    assert "torch-eager-fp32" in backends and {"ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8"} <= set(backends)
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
    ms = r["maxsim"]
    assert {"ours", "naive_loop", "seed_score_multi_vector", "index_search"} <= set(ms)
    assert r["ratios"]["maxsim"]["ours_gflops"] > 0
    assert (tmp_path / "t.md").read_text().startswith("# collfm2-edge benchmark")
