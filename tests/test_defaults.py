"""The one table of defaults: which (engine, precision) a CPU runs when the user names neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.encoder import defaults, ov
from runtime.encoder.runner import ENGINES

BF16 = {"AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16"}
VNNI = {"AVX2", "AVX512F", "AVX512VNNI"}
AVX2 = {"AVX2", "FMA3"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table itself, without the suite's pinned engine."""
    monkeypatch.delenv("COLLFM2_ENGINE", raising=False)


def test_every_row_names_a_real_engine_and_cites_a_run_or_says_none(table: None) -> None:
    for kind, row in defaults.TABLE.items():
        assert row.engine in ENGINES and row.why, kind
        if row.measured:
            assert (ROOT / row.measured).is_file(), f"{kind} cites {row.measured}, which is not committed"
        if row.engine.startswith("ov-") and row.precision:
            assert row.precision in ov.PRECISIONS


def test_the_cpu_kind_picks_the_row(table: None) -> None:
    assert defaults.cpu_kind(BF16, "x86_64") == "x86_64-avx512vnni+bf16"
    assert defaults.cpu_kind(AVX2, "x86_64") == "x86_64-avx2"
    assert defaults.choose(BF16, "x86_64")[1] == defaults.TABLE["x86_64-avx512vnni+bf16"]
    assert defaults.choose(AVX2, "x86_64")[1].engine == "ort-cpu"
    assert defaults.choose({"ASIMD", "ASIMDDP"}, "aarch64")[1].engine == "ort-cpu"  # unmeasured: ORT stays
    assert defaults.choose(set(), "riscv64")[1] == defaults.FALLBACK


def test_the_override_and_a_missing_openvino(table: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLFM2_ENGINE", "ort-cpu")
    row = defaults.choose(BF16, "x86_64")[1]
    assert row.engine == "ort-cpu" and "COLLFM2_ENGINE" in row.why
    monkeypatch.delenv("COLLFM2_ENGINE")
    monkeypatch.setattr(defaults, "openvino_installed", lambda: False)
    row = defaults.choose(BF16, "x86_64")[1]
    if defaults.TABLE["x86_64-avx512vnni+bf16"].engine.startswith("ov-"):
        assert row.engine == "ort-cpu" and "openvino, not installed" in row.why


def test_a_recorded_precision_picks_its_engine(table: None) -> None:
    assert defaults.engine_for("ov/int8", AVX2) == "ov-cpu"
    assert defaults.engine_for("trt/orin-fp16@abc", AVX2) == "trt"
    assert defaults.engine_for("int8", BF16) == defaults.engine_for("fp16", BF16) == "ort-cpu"
    assert defaults.engine_for("bf16", AVX2) == "ov-cpu"  # refused there by the engine, in one line
    assert defaults.engine_for(None, BF16) == defaults.engine_for("fp32", BF16) == defaults.TABLE[
        "x86_64-avx512vnni+bf16"].engine  # fmt: skip
    assert defaults.engine_for(None, AVX2) == "ort-cpu"


def test_openvino_takes_the_tables_precision_only_where_the_table_chose_it(table: None, monkeypatch) -> None:
    row = defaults.TABLE["x86_64-avx512vnni+bf16"]
    want = row.precision if row.engine == "ov-cpu" and row.precision else "fp32"
    assert ov.resolve(ENGINES["ov-cpu"], None, ["fp32", "int8"], features=BF16).name == want
    assert ov.resolve(ENGINES["ov-cpu"], None, ["fp32", "int8"], features=AVX2).name == "fp32"
    monkeypatch.setenv("COLLFM2_ENGINE", "ort-cpu")
    assert ov.resolve(ENGINES["ov-cpu"], None, ["fp32", "int8"], features=BF16).name == "fp32"


def test_selftest_says_what_this_machine_would_run(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLLFM2_ENGINE")  # the table's own row, here and in the command
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-m", "runtime", "selftest", "--bundle", str(tiny_bundle), "--json",
                          "--precision", "fp32"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    kind, row = defaults.choose()
    assert report["default"] == {"cpu_kind": kind, "engine": row.engine, "precision": row.precision,
                                 "why": row.why, "measured": row.measured}  # fmt: skip
    assert report["backend"] == row.engine  # no --engine: the table's
    # Forcing the row's own engine keeps the row, so force the other one: which that is depends on
    # the CPU (an AVX2 row is ONNX Runtime's, a bf16 row OpenVINO's), the message must not.
    forced = "ov-cpu" if row.engine == "ort-cpu" else "ort-cpu"
    if forced == "ov-cpu" and not defaults.openvino_installed():
        pytest.skip("the row is ONNX Runtime's, and the other engine needs openvino (make setup installs it)")
    env["COLLFM2_ENGINE"] = forced
    text = subprocess.run([sys.executable, "-m", "runtime", "selftest", "--bundle", str(tiny_bundle), "--precision",
                           "fp32"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert f"default on this CPU ({kind}): --engine {forced} (COLLFM2_ENGINE={forced} overrides" in text.stdout


def test_a_precision_slower_than_fp32_is_named_when_asked_for() -> None:
    wo, dyn = ["dynamic-int8", "weight-only-int8"], ["dynamic-int8", "dynamic-int8"]
    note = defaults.slower_than_fp32("ort-cpu", "int8", wo, machine="x86_64")
    assert note and "weight-only" in note and "--precision fp32" in note and "\n" not in note
    assert defaults.slower_than_fp32("ort-cpu", "int8", wo, machine="aarch64") is None  # int8 reads 1/4 the weights
    assert defaults.slower_than_fp32("ort-cpu", "int8", dyn, machine="x86_64") is None
    assert "slower than fp32" in defaults.slower_than_fp32("ort-cpu", "fp16", [], machine="x86_64")
    assert defaults.slower_than_fp32("ov-cpu", "ov/int8", wo, machine="x86_64", features=VNNI) is None
    note = defaults.slower_than_fp32("ov-cpu", "ov/int8", wo, machine="x86_64", features=AVX2)
    assert note and "VNNI" in note and "--precision fp32" in note and "\n" not in note
    assert defaults.slower_than_fp32("ov-cpu", "int8", wo, machine="x86_64", features=set()) == note  # SSE
    assert defaults.slower_than_fp32("ov-cpu", "ov/int8", wo, machine="aarch64", features=set()) is None
    kinds = {"x86_64-avx512vnni+bf16": ("x86_64", BF16), "x86_64-avx512vnni": ("x86_64", VNNI),
             "x86_64-avx2": ("x86_64", AVX2), "x86_64-sse": ("x86_64", set()),
             "aarch64-dotprod": ("aarch64", {"ASIMD", "ASIMDDP"}), "aarch64": ("aarch64", {"ASIMD"})}  # fmt: skip
    for kind, row in defaults.TABLE.items():  # the table never defaults to one of them
        machine, feats = kinds[kind]
        assert defaults.cpu_kind(feats, machine) == kind
        assert row.precision is None or defaults.slower_than_fp32(row.engine, row.precision, wo, machine, feats) is None


def test_hidden_features_make_this_machine_take_another_rows_decisions(table: None, monkeypatch) -> None:
    """``COLLFM2_CPU_HIDE`` is how a bf16 machine measures and tests the VNNI-without-bf16 row: every
    decision reads the masked features, and reports say what was hidden."""
    from runtime import cpu

    monkeypatch.delenv("COLLFM2_OV_FORCE_BF16", raising=False)
    monkeypatch.setenv("COLLFM2_CPU_HIDE", "avx512bf16, AVX512VNNI,AVX2")
    assert cpu.hidden_features() == {"AVX512BF16", "AVX512VNNI", "AVX2"}
    assert not {"AVX512BF16", "AVX512VNNI", "AVX2"} & cpu.cpu_features()
    assert not cpu.native_bf16() and cpu.cpu_host()["hidden"] == ["AVX2", "AVX512BF16", "AVX512VNNI"]
    if cpu.cpu_class().startswith("x86_64"):  # whatever x86 this is, it now takes the SSE row
        assert defaults.cpu_kind() == cpu.cpu_class() == "x86_64-sse"
        assert defaults.choose()[1] == defaults.TABLE["x86_64-sse"]
    with pytest.raises(ov.UserError, match="no native bf16"):
        ov.resolve(ENGINES["ov-cpu"], "bf16", ["fp32", "int8"])
    monkeypatch.setenv("COLLFM2_CPU_HIDE", "AVX512BF16")
    assert "hidden" in cpu.cpu_host() and not cpu.native_bf16()
    monkeypatch.delenv("COLLFM2_CPU_HIDE")
    assert cpu.hidden_features() == set() and "hidden" not in cpu.cpu_host()


def test_a_row_that_chose_int8_runs_fp32_on_a_bundle_without_int8(table: None, monkeypatch) -> None:
    kind = defaults.cpu_kind(VNNI, "x86_64")
    monkeypatch.setitem(defaults.TABLE, kind, defaults.Default("ov-cpu", "int8", "", "a test row"))
    assert ov.resolve(ENGINES["ov-cpu"], None, ["fp32", "int8"], features=VNNI).name == "int8"
    assert ov.resolve(ENGINES["ov-cpu"], None, ["fp32"], features=VNNI).name == "fp32"
