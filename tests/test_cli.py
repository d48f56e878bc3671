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
