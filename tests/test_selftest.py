"""``python -m runtime selftest``: a bundle's fidelity measured on the machine that runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from runtime.bundle.manifest import MANIFEST
from runtime.cpu import cpu_class


def _selftest(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", "selftest", "--bundle", str(bundle), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_passes_and_names_the_cpu(tiny_bundle: Path) -> None:
    res = _selftest(tiny_bundle)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"({cpu_class()})" in res.stdout and res.stdout.count("PASS") == 4
    report = json.loads(_selftest(tiny_bundle, "--json", "--precision", "int8").stdout)
    assert list(report["results"]) == ["int8"] and report["passed"] and report["cpu_class"] == cpu_class()
    assert report["results"]["int8"]["gate"].startswith("worst cos >= 0.98")


def test_a_failing_gate_exits_1(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path / "b")
    m = json.loads((b / MANIFEST).read_text())
    m["precisions"]["int8"]["gate"]["min_worst_cos"] = 1.5  # no real output can reach it
    (b / MANIFEST).write_text(json.dumps(m))
    res = _selftest(b, "--precision", "fp32,int8")
    assert res.returncode == 1
    assert "fp32" in res.stdout and "int8" in res.stdout and "FAIL: worst-token cosine" in res.stdout


def test_damaged_or_missing_probe_is_one_line_exit_2(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path / "b")
    m = json.loads((b / MANIFEST).read_text())
    ref = b / m["selftest"]["reference"]
    ref.write_bytes(ref.read_bytes()[:-10])
    res = _selftest(b)
    assert res.returncode == 2 and "sha256" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    del m["selftest"]
    (b / MANIFEST).write_text(json.dumps(m))
    res = _selftest(b)
    assert res.returncode == 2 and "no selftest probe" in res.stderr
    res = _selftest(b, "--precision", "fp8")
    assert res.returncode == 2 and "error:" in res.stderr
