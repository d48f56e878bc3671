"""The OpenVINO engine (``--engine ov-cpu``): precisions, refusals, fidelity, the compile cache."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.encoder import ov
from runtime.encoder.runner import ENGINES, check_recorded
from runtime.errors import ModelFilesError, UserError

CPU = ENGINES["ov-cpu"]
ALL = ["fp32", "fp16", "int8", "int8-qdq"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_precisions_are_resolved_or_refused_in_one_line() -> None:
    assert ov.resolve(CPU, None, ALL).name == "fp32"
    assert ov.resolve(CPU, "ov/int8", ALL).recorded == "ov/int8"
    assert ov.resolve(CPU, "fp32", ALL).recorded == "fp32"  # gated like ONNX Runtime's fp32: one index
    assert ov.resolve(CPU, "bf16", ALL, features={"AVX512F", "AVX512BF16"}).hint("text") == "bf16"
    int8 = ov.resolve(CPU, "int8", ALL)
    assert int8.hint("vision", {"AVX512BF16"}) == "bf16" and int8.hint("vision", {"AVX2"}) == "f32"
    with pytest.raises(UserError, match="no native bf16") as e:
        ov.resolve(CPU, "bf16", ALL, features={"AVX2", "AVX512F", "AVX512VNNI"})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="GPU and NPU"):
        ov.resolve(CPU, "fp16", ALL)
    assert ov.resolve(ENGINES["ov-gpu"], None, ALL).name == "fp16"
    with pytest.raises(UserError, match="choose from fp32, bf16, int8"):
        ov.resolve(CPU, "int4", ALL)
    with pytest.raises(ModelFilesError, match="needs the bundle's int8 graphs; re-export with --precision fp32,int8"):
        ov.resolve(CPU, "int8", ["fp32"])
    assert ov.offered(CPU, ["fp32"], features=set()) == ["fp32"]
    assert ov.offered(CPU, ALL, features={"AVX512BF16"}) == ["fp32", "bf16", "int8"]


def test_forced_bf16_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLFM2_OV_FORCE_BF16", "1")
    assert ov.resolve(CPU, "bf16", ALL, features=set()).name == "bf16"


def test_recorded_precisions_name_their_engine() -> None:
    with pytest.raises(UserError, match="made by the ov-cpu engine, not ort-cpu; pass --engine ov-cpu"):
        check_recorded("ort-cpu", "ov/bf16")
    with pytest.raises(UserError, match="pass --engine trt"):
        check_recorded("ov-cpu", "trt/orin-fp16@abc")
    check_recorded("ov-npu", "ov/fp16")
    check_recorded("ov-cpu", "fp32")


def test_each_precision_passes_its_gate_and_matches_onnx_runtime(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 is ONNX Runtime's fp32 to float rounding; int8 runs ONNX Runtime's int8 text graph and
    OpenVINO's own int8 vision graph; bf16 (forced where the CPU lacks it) passes the
    reduced-precision gate."""
    from runtime import ColLFM2, ColLFM2Processor
    from runtime.encoder.selftest import selftest

    monkeypatch.setenv("COLLFM2_OV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLLFM2_OV_FORCE_BF16", "1")
    report = selftest(tiny_bundle, backend="ov-cpu")
    assert list(report["results"]) == ["fp32", "bf16", "int8"] and report["passed"], report
    assert report["results"]["fp32"]["gate"].startswith("worst cos >= 0.99999")
    assert report["results"]["int8"]["gate"].startswith("worst cos >= 0.98")

    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    batch = proc.process_images([np.full((300, 700, 3), 90, np.uint8)])
    queries = proc.process_queries(["total amount due", "a"])
    ref = ColLFM2.from_pretrained(tiny_bundle, precision="fp32")
    got = ColLFM2.from_pretrained(tiny_bundle, precision="fp32", backend="ov-cpu")
    assert got.precision == "fp32"
    np.testing.assert_allclose(got(**batch), ref(**batch), atol=1e-5)
    np.testing.assert_allclose(got(**queries), ref(**queries), atol=1e-5)
    # int8: weight-only graphs, within the reduced-precision gate of fp32; queries never touch vision.
    q8 = ColLFM2.from_pretrained(tiny_bundle, precision="int8", backend="ov-cpu")
    assert q8.precision == "ov/int8" and not q8.one_at_a_time  # weight-only graphs batch
    for inputs in (queries, batch):
        want = ref(**inputs)
        cos = (q8(**inputs) * want).sum(-1)[want.any(-1)]  # unit rows; padding rows are 0
        assert cos.min() > 0.98 and cos.mean() > 0.995, (cos.min(), cos.mean())
    assert any((tmp_path / "cache").iterdir()), "the compile cache stayed empty"


def test_without_openvino_it_is_one_line(tiny_bundle: Path) -> None:
    script = (
        "import sys; sys.modules['openvino'] = None\n"
        "from runtime import ColLFM2\n"
        "from runtime.errors import UserError\n"
        "try:\n"
        f"    ColLFM2.from_pretrained({str(tiny_bundle)!r}, backend='ov-cpu')\n"
        "except UserError as e:\n"
        "    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == ov.INSTALL, res.stdout + res.stderr


def test_a_damaged_graph_is_refused_before_compiling(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with open(b / "fp32" / "text.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    res = _run("selftest", "--bundle", str(b), "--engine", "ov-cpu", "--precision", "fp32")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "does not match the manifest" in res.stderr and "Traceback" not in res.stderr


def test_an_index_made_by_openvino_int8_says_which_engine_searches_it(tiny_bundle: Path, tmp_path: Path) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((200, 300, 3), 60 * i, np.uint8)).save(pages / f"p{i}.png")
    idx = tmp_path / "idx"
    env = {"COLLFM2_OV_CACHE": str(tmp_path / "cache")}
    # Asked for by name on x86 without AVX-512 VNNI (hidden here, so every x86 CPU takes that path),
    # OpenVINO int8 runs with a one-line note that fp32 is faster.
    hide = {**env, "COLLFM2_CPU_HIDE": "AVX512VNNI,AVX512BF16"}
    res = _run("index", "add", "--index", str(idx), "--bundle", str(tiny_bundle), "--engine", "ov-cpu",
               "--precision", "int8", str(pages), env=hide)  # fmt: skip
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if line.startswith("[runtime] note: ov-cpu ov/int8")]
    assert len(notes) == (1 if platform.machine().lower() in ("x86_64", "amd64") else 0), res.stderr
    meta = json.loads(_run("index", "info", "--index", str(idx), "--json").stdout)
    assert "ov/int8" in json.dumps(meta), meta
    res = _run("search", "--index", str(idx), "--engine", "ort-cpu", "hello")
    assert res.returncode == 2 and "pass --engine ov-cpu" in res.stderr and "Traceback" not in res.stderr
    for engine in (["--engine", "ov-cpu"], []):  # without --engine, the recorded precision picks its maker
        res = _run("search", "--index", str(idx), *engine, "--json", "hello", env=env)
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 2, res.stderr


def test_the_export_gates_openvino_and_the_runtime_refuses_a_failed_precision(tiny_bundle: Path,
                                                                               tmp_path: Path) -> None:  # fmt: skip
    import shutil

    from runtime.bundle.manifest import MANIFEST
    from runtime.encoder.defaults import cpu_kind

    gates = json.loads((tiny_bundle / MANIFEST).read_text())["openvino"]
    assert {"fp32", "int8"} <= set(gates) and all(g["passed"] for g in gates.values()), gates
    assert gates["fp32"]["measured_on"] == cpu_kind() and gates["int8"]["recorded_as"] == "ov/int8"
    made = json.loads((tiny_bundle / MANIFEST).read_text())["precisions"]["int8"]["graphs"]["text"]["method"]
    own_text = ov.PRECISIONS["int8"].own["text"].file
    assert gates["int8"]["graphs"]["text"]["file"] == ("int8/text.onnx" if made == "weight-only-int8" else own_text)
    assert gates["fp32"]["graphs"]["text"]["fidelity"]["worst_cos"] >= 0.99999

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / MANIFEST).read_text())
    m["openvino"]["int8"]["passed"] = False
    m["openvino"]["int8"]["graphs"]["text"].update(passed=False, failures=["worst-token cosine 0.9 < 0.98"])
    (b / MANIFEST).write_text(json.dumps(m))
    res = _run("selftest", "--bundle", str(b), "--engine", "ov-cpu", "--precision", "int8")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "OpenVINO int8 failed its gate at export" in res.stderr and "text: worst-token cosine 0.9" in res.stderr
    assert _run("selftest", "--bundle", str(b), "--engine", "ov-cpu", "--precision", "fp32").returncode == 0


def test_int8_runs_openvinos_own_vision_graph_and_a_bundle_without_it_still_runs(tiny_bundle: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    """The exporter writes int8's weight-only graphs for OpenVINO and hashes them; a bundle
    exported without them (older, or ``--no-openvino-gate``) runs the fp32 vision graph and the
    int8 text graph instead."""
    import shutil

    from runtime import ColLFM2, ColLFM2Processor
    from runtime.bundle.manifest import MANIFEST, open_bundle

    m = json.loads((tiny_bundle / MANIFEST).read_text())
    own = ov.PRECISIONS["int8"].own["vision"]
    vision = m["openvino"]["int8"]["graphs"]["vision"]
    assert vision["file"] == own.file and vision["method"] == "weight-only-int8" and vision["hint"] == "f32"
    assert own.file in m["files"] and (tiny_bundle / own.file).is_file()
    assert ov.PRECISIONS["int8"].graph_file("vision", m) == (own.file, "f32")
    text = m["openvino"]["int8"]["graphs"]["text"]  # weight-only too: the bundle's own if it is, else OpenVINO's
    if m["precisions"]["int8"]["graphs"]["text"]["method"] == "weight-only-int8":
        assert text["file"] == "int8/text.onnx" and ov.PRECISIONS["int8"].own["text"].file not in m["files"]
    else:
        assert text["file"] == ov.PRECISIONS["int8"].own["text"].file and text["method"] == "weight-only-int8"
    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    batch = proc.process_images([np.full((300, 700, 3), 90, np.uint8)])
    with_own = ColLFM2.from_pretrained(tiny_bundle, precision="int8", backend="ov-cpu")
    assert ov.load(CPU, open_bundle(tiny_bundle), "int8", 1, None).entry["graphs"]["vision"]["file"] == own.file
    ref = ColLFM2.from_pretrained(tiny_bundle, precision="fp32")(**batch)

    b = tmp_path / "old"
    shutil.copytree(tiny_bundle, b)
    for graph in ("vision", "text"):
        (b / ov.PRECISIONS["int8"].own[graph].file).unlink(missing_ok=True)
        m["files"].pop(ov.PRECISIONS["int8"].own[graph].file, None)
    (b / MANIFEST).write_text(json.dumps(m))
    without = ColLFM2.from_pretrained(b, precision="int8", backend="ov-cpu")
    graphs = ov.load(CPU, open_bundle(b), "int8", 1, None).entry["graphs"]
    assert graphs["vision"]["file"] == "fp32/vision.onnx" and graphs["text"]["file"] == "int8/text.onnx"
    for model in (with_own, without):
        got = model(**batch)
        cos = (got * ref).sum(-1)[ref.any(-1)]  # unit rows
        assert cos.min() > 0.98, cos.min()
    # Weight-only graphs are batched (OpenVINO quantises activations per token), and a query's
    # rows do not depend on what shares its batch.
    assert "text" not in with_own.one_at_a_time and "vision" not in with_own.one_at_a_time
    texts = ["total amount due", "a much longer query about the quarterly revenue chart"]
    both = with_own(**proc.process_queries(texts))
    for i, text in enumerate(texts):
        alone = with_own(**proc.process_queries([text]))[0]
        n = int(alone.any(-1).sum())
        got = both[i][both[i].any(-1)]
        np.testing.assert_allclose(got, alone[alone.any(-1)], atol=2e-5, err_msg=f"{text!r}: {n} rows")


def test_an_own_graph_that_fails_its_gate_falls_back_to_the_graph_it_replaced(
    tiny_bundle: Path, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import onnx
    from onnx import numpy_helper

    from export import ov_gate
    from export.validate import reference_set, validation_inputs
    from runtime import ColLFM2Processor
    from runtime.bundle.manifest import MANIFEST

    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    pages, queries = validation_inputs(proc)
    ref = reference_set(tiny_model, proc, {"p": pages["tile-26x36"]}, queries[:2], full_pipeline=False)
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    own = ov.PRECISIONS["int8"].own["vision"]
    (b / own.file).unlink()
    precisions = json.loads((b / MANIFEST).read_text())["precisions"]

    def wrecked(bundle_dir: Path, own_graph: ov.OwnGraph, source_rel: str, log) -> None:
        g = onnx.load(str(bundle_dir / source_rel))
        rng = np.random.default_rng(0)
        for init in g.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.size > 1000:
                init.CopyFrom(numpy_helper.from_array(rng.normal(size=w.shape).astype(np.float32), init.name))
        (bundle_dir / own_graph.file).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(g, str(bundle_dir / own_graph.file))

    monkeypatch.setattr(ov_gate, "write_own_graph", wrecked)
    monkeypatch.setenv("COLLFM2_CPU_HIDE", "AVX512BF16")  # the fallback's hint is then f32 on every CPU
    logged: list[str] = []
    gates = ov_gate.gate_openvino(b, precisions, ref, logged.append)
    vision = gates["int8"]["graphs"]["vision"]
    assert vision["file"] == "fp32/vision.onnx" and vision["hint"] == "f32" and vision["passed"], vision
    assert vision["rejected"]["file"] == own.file and not vision["rejected"]["passed"], vision
    assert not (b / own.file).exists() and gates["int8"]["passed"]
    assert any("its own graph failed (" in line and "falling back to the fp32 graph" in line for line in logged)

    def broken(bundle_dir: Path, own_graph: ov.OwnGraph, source_rel: str, log) -> None:
        (bundle_dir / own_graph.file).write_bytes(b"half a graph")
        raise RuntimeError("the quantiser gave up")

    monkeypatch.setattr(ov_gate, "write_own_graph", broken)
    vision = ov_gate.gate_openvino(b, precisions, ref, logged.append)["int8"]["graphs"]["vision"]
    assert vision["file"] == "fp32/vision.onnx" and vision["passed"], vision
    assert vision["rejected"]["failures"] == ["RuntimeError: the quantiser gave up"] and not (b / own.file).exists()
