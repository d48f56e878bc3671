"""Jetson tooling that can be checked here: the tegrastats parser, and aarch64 wheels for the runtime."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("power_log", ROOT / "jetson" / "power_log.py")
power_log = importlib.util.module_from_spec(spec)
spec.loader.exec_module(power_log)

# Recorded lines: Orin Nano on JetPack 6 (mW units on rails), AGX Orin on JetPack 5, Xavier NX on
# JetPack 4 (no units, POM_ rails, GR3D_FREQ with a frequency).
ORIN_NANO = (
    "11-27-2026 13:00:00 RAM 2334/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [12%@1510,5%@1510,0%@1510,3%@1510,off,off] EMC_FREQ 0% GR3D_FREQ 61% cpu@47.5C soc2@46.281C "
    "soc0@47.093C gpu@46.218C tj@47.5C soc1@46.531C VDD_IN 7834mW/6012mW VDD_CPU_GPU_CV 2480mW/1780mW "
    "VDD_SOC 1441mW/1402mW"
)
AGX_ORIN = (
    "RAM 10288/30536MB (lfb 1421x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729,2%@729,0%@729,"
    "0%@2201,0%@2201,0%@2201,0%@2201] EMC_FREQ 1%@2133 GR3D_FREQ 99%@[1300,1300] VIC_FREQ 729 APE 233 "
    "CV0@-256C CPU@48.187C SOC2@44.875C GPU@48.906C tj@50.281C VDD_GPU_SOC 11230mW/9876mW "
    "VDD_CPU_CV 801mW/790mW VIN_SYS_5V0 4321mW/4300mW"
)
XAVIER_NX = (
    "RAM 1903/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) CPU [2%@1190,1%@1190,off,off,0%@1190,0%@1190] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@114 APE 150 MTS fg 0% bg 0% AO@38.5C GPU@38C PMIC@100C AUX@37.5C "
    "CPU@39C thermal@38.55C POM_5V_IN 2123/2123 POM_5V_GPU 0/0 POM_5V_CPU 393/393"
)


def test_parse_orin_nano() -> None:
    s = power_log.parse_line(ORIN_NANO)
    assert s["ram_mb"] == 2334 and s["ram_total_mb"] == 7620 and s["swap_mb"] == 0
    assert s["cpu"][:2] == [(12, 1510), (5, 1510)] and s["cpu"][4:] == [None, None]
    assert s["gpu_pct"] == 61 and s["temps_c"]["tj"] == 47.5
    assert s["rails_mw"]["VDD_IN"] == {"mw": 7834, "avg_mw": 6012}
    assert power_log.input_power_mw(s) == 7834


def test_parse_agx_orin_and_xavier() -> None:
    agx = power_log.parse_line(AGX_ORIN)
    assert agx["gpu_pct"] == 99 and agx["emc_pct"] == 1 and len(agx["cpu"]) == 8
    assert agx["rails_mw"]["VDD_GPU_SOC"]["mw"] == 11230 and agx["temps_c"]["CV0"] == -256.0
    nx = power_log.parse_line(XAVIER_NX)
    assert nx["rails_mw"]["POM_5V_IN"] == {"mw": 2123, "avg_mw": 2123} and power_log.input_power_mw(nx) == 2123
    assert nx["gpu_pct"] == 0 and nx["cpu"][2] is None
    assert power_log.parse_line("garbage") is None


def test_summary() -> None:
    samples = [power_log.parse_line(ORIN_NANO), power_log.parse_line(ORIN_NANO.replace("7834mW", "5834mW"))]
    out = power_log.summarize(samples, seconds=2.0, interval_ms=200)
    assert out["mean_input_w"] == pytest.approx(6.834) and out["peak_input_w"] == pytest.approx(7.834)
    assert out["energy_j"] == pytest.approx(13.668) and out["peak_ram_mb"] == 2334


def test_runtime_dependencies_have_aarch64_wheels(tmp_path: Path) -> None:
    """Resolve the runtime's dependencies for a Raspberry Pi / Jetson (aarch64, Python 3.11) without
    the board. Both platform tags: onnxruntime's aarch64 wheels are manylinux_2_28, and with only
    manylinux2014 pip silently falls back to onnxruntime 1.16."""
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.11",
           "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
           "-d", str(tmp_path), "-c", str(ROOT / "constraints.txt"), *deps]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and re.search(r"(?i)connection|network is unreachable|temporary failure", res.stderr):
        pytest.skip(f"no package registry reachable: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr[-3000:]
    wheels = [p.name for p in tmp_path.glob("*.whl")]
    ort = [w for w in wheels if w.startswith("onnxruntime-")]
    assert ort and "aarch64" in ort[0], wheels
    version = tuple(int(x) for x in ort[0].split("-")[1].split(".")[:2])
    assert version >= (1, 17), f"fell back to an old onnxruntime: {ort[0]}"
    for name in ("numpy", "tokenizers", "pillow"):
        assert any(w.lower().startswith(name) and ("aarch64" in w or "none-any" in w) for w in wheels), (name, wheels)
