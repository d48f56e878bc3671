"""The CLIs as a user runs them: exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_export_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    res = _run("export", "--target", "checkpoint", "--model", "tiny", "--out", str(out), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "dry run" in res.stdout and not out.exists()


def test_export_writes_a_loadable_checkpoint_and_says_random(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    res = _run("export", "--target", "checkpoint", "--model", "tiny", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "RANDOM WEIGHTS" in res.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "processor_config.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ck.")]  # no temp dir left behind
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "collfm2" and config["base_model"] == "collfm2-edge/tiny-lfm2-vl"
    again = _run("export", "--target", "checkpoint", "--model", "tiny", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    # Re-writing a checkpoint from disk keeps its tokenizer and processor files.
    copy = tmp_path / "copy"
    res = _run("export", "--target", "checkpoint", "--model", str(out), "--out", str(copy), "--vision-keys", "5.x")
    assert res.returncode == 0, res.stderr
    assert (copy / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    assert json.loads((copy / "config.json").read_text())["collfm2_edge"] == {"preset": "tiny", "random_weights": True}
    assert "RANDOM WEIGHTS" in res.stdout


def test_export_bad_model_is_one_line_exit_2(tmp_path: Path) -> None:
    res = _run("export", "--target", "checkpoint", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1


def test_runtime_preprocess_reports_and_skips_bad_files(tmp_path: Path, tiny_ckpt: Path) -> None:
    good = tmp_path / "page.png"
    Image.new("RGB", (1240, 1754), "white").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    res = _run("runtime", "preprocess", "--model", str(tiny_ckpt), "--json", str(good), str(bad))
    assert res.returncode == 1
    row = json.loads(res.stdout.strip())
    assert row["grid"] == [3, 2] and row["thumbnail"] and row["image_tokens"] == 1783
    assert "bad.png: empty file" in res.stderr
    res = _run("runtime", "tokenize", "--model", str(tiny_ckpt), " ")
    assert res.returncode == 2 and "empty query" in res.stderr
    res = _run("runtime", "preprocess", "--model", str(tmp_path), str(good))
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_a_reader_that_stops_early_gets_no_traceback(tiny_ckpt: Path) -> None:
    """``python -m runtime ... | head``: output past what the reader took ends the command quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "tokenize", "--model", str(tiny_ckpt),
                             *[f"query number {i}" for i in range(3000)]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.read(10)  # well under the ~100 kB it writes: it is still writing when the pipe closes
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == "", err


def test_onnx_dry_run_defaults_to_random_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = _run("export", "--target", "onnx", "--out", str(out), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "using the 'random' preset (RANDOM weights)" in res.stdout
    for step in ("export ", "fp32", "fp16", "int8", "dynamic-int8 -> weight-only-int8", "package"):
        assert step in res.stdout
    assert not out.exists()


def test_onnx_bad_precision_and_opset(tmp_path: Path) -> None:
    res = _run("export", "--target", "onnx", "--out", str(tmp_path / "b"), "--precision", "fp8", "--dry-run")
    assert res.returncode == 2 and "unknown precision 'fp8'" in res.stderr
    res = _run("export", "--target", "onnx", "--out", str(tmp_path / "b"), "--opset", "17", "--dry-run")
    assert res.returncode == 2 and "--opset must be >= 18" in res.stderr


def test_onnx_export_cli_fp32(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = _run("export", "--target", "onnx", "--model", "tiny", "--out", str(out), "--precision", "fp32", "--validate")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "RANDOM WEIGHTS" in res.stdout and "validate fp32" in res.stdout and "PASS" in res.stdout
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    res = _run("export", "--target", "onnx", "--model", "tiny", "--out", str(out), "--precision", "fp32")
    assert res.returncode == 2 and "already exists; pass --force" in res.stderr


def test_an_fp32_export_gates_openvino_unless_told_not_to(tmp_path: Path) -> None:
    """fp32 alone needs no reference for ONNX Runtime; OpenVINO's precisions (bf16 where native) still get one."""
    for flags, gated in (([], True), (["--no-openvino-gate"], False)):
        out = tmp_path / f"b{int(gated)}"
        res = _run("export", "--target", "onnx", "--model", "tiny", "--out", str(out), "--precision", "fp32", *flags)
        assert res.returncode == 0, res.stderr[-2000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert ("openvino" in manifest) is gated and ("openvino fp32/text" in res.stdout) is gated
        if gated:
            assert manifest["openvino"]["fp32"]["passed"] and "int8" not in manifest["openvino"]  # no int8 graphs


def test_interrupted_export_leaves_no_bundle(tmp_path: Path, monkeypatch) -> None:
    """A failure (or Ctrl-C) mid-export leaves neither --out nor a temp dir; an old bundle survives."""
    from export import onnx_export
    from export.recipes import Precision

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous bundle, replaced only on success

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "build_precision", boom)
    cfg = onnx_export.OnnxConfig("tiny", str(out), (Precision.FP32,), force=True)
    try:
        onnx_export.run(cfg, log=lambda m: None)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was swallowed")
    assert (out / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_demo_on_a_bundle_and_on_a_checkpoint(tmp_path: Path, tiny_bundle: Path, tiny_ckpt: Path) -> None:
    # The tiny bundle records its random preset; the tiny_ckpt fixture is written without provenance.
    for flag, path, random in (("--bundle", tiny_bundle, True), ("--model", tiny_ckpt, False)):
        res = _run("export.demo", flag, str(path), "--pages", str(tmp_path / "pages"), "--device", "cpu")
        assert res.returncode == 0, res.stderr[-2000:]
        assert ("RANDOM WEIGHTS" in res.stdout) is random and res.stdout.count("query:") == 3
    res = _run("export.demo")
    assert res.returncode == 2 and "exactly one of --bundle or --model" in res.stderr
    res = _run("export.demo", "--bundle", str(tmp_path / "missing"))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "no such bundle" in res.stderr
