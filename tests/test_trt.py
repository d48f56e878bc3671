"""TensorRT target without TensorRT: plans, profiles, pre-flight, rewrites, engine manifests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.trt import DEVICE_PROFILES, TRT_VERSIONS, TrtConfig, build_path, plan_and_check, plan_engines, preflight
from export.trt.rewrite import prepare_for_trt
from runtime import ModelFilesError, open_bundle
from runtime.bundle.trt_manifest import ENGINE_SCHEMA_VERSION, check_engine
from runtime.preprocess.image import position_weights, unshuffle_index


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("profile", sorted(DEVICE_PROFILES))
def test_dry_run_plan_per_profile(tiny_bundle: Path, profile: str) -> None:
    res = _cli(
        "--target", "trt", "--bundle", str(tiny_bundle), "--profile", profile, "--precision", "int8", "--dry-run"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "vision.engine <- int8-qdq/vision.onnx" in out and "text.engine <- int8-qdq/text.onnx" in out
    for version in TRT_VERSIONS:
        assert out.count(f"pre-flight TensorRT {version} ") + out.count(f"pre-flight TensorRT {version}:") == 2
        assert f"TensorRT {version} ({TRT_VERSIONS[version].where}): {build_path(version).name} build" in out
    p = DEVICE_PROFILES[profile]
    manifest = open_bundle(tiny_bundle, verify=False).manifest
    assert plan_engines(tiny_bundle, manifest, "fp16", profile, "8.6")[0].onnx == "fp32/vision.onnx"
    specs = plan_engines(tiny_bundle, manifest, "fp16", profile, "10.3")
    vision, text = specs
    assert vision.onnx == "fp16/vision.onnx" and [s[0] for s in vision.profiles[0]["pixel_values"]] == list(
        p.vision_batch
    )
    query, doc = text.profiles
    assert [s[1] for s in query["inputs_embeds"]] == list(p.query_seq) and max(p.query_seq) == 128
    assert [s[1] for s in doc["attention_mask"]] == list(p.doc_seq) and max(p.doc_seq) >= 2900


def test_plan_needs_the_right_graphs(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = open_bundle(tiny_bundle, verify=False).manifest
    trimmed = {**manifest, "precisions": {"fp32": manifest["precisions"]["fp32"]}}
    with pytest.raises(
        ValueError, match=r"int8-qdq graphs, which the bundle lacks; export with --precision \.\.\.,int8-qdq"
    ):
        plan_engines(tiny_bundle, trimmed, "int8", "orin-nano")
    with pytest.raises(ValueError, match=r"TensorRT 10\.3 \(strongly typed\) builds fp16 engines from the fp16 graphs"):
        plan_engines(tiny_bundle, trimmed, "fp16", "orin-nano", "10.3")
    assert plan_engines(tiny_bundle, trimmed, "fp16", "orin-nano", "8.6")[0].source_precision == "fp32"
    with pytest.raises(ValueError, match="unknown profile"):
        plan_engines(tiny_bundle, manifest, "fp16", "pi5")
    res = _cli("--target", "trt", "--dry-run")
    assert res.returncode == 2 and "needs --bundle" in res.stderr


@pytest.mark.parametrize("precision", ["fp32", "int8-qdq"])
def test_exported_graphs_pass_preflight_on_every_version(tiny_bundle: Path, tmp_path: Path, precision: str) -> None:
    plans, _ = plan_and_check(
        TrtConfig(str(tiny_bundle), "fp16" if precision == "fp32" else "int8", "desktop"), tmp_path
    )
    assert set(plans) == set(TRT_VERSIONS)
    for specs in plans.values():
        for spec in specs:
            errors = [str(p) for p in spec.problems if p.severity == "error"]
            assert not errors, errors
    # Without the rewrite, TensorRT 8.x would refuse the opset-18 graphs: the check does see that.
    raw = preflight(tiny_bundle / precision / "vision.onnx", "vision", "8.5")
    assert any("opset 18 > 17" in p.message for p in raw)
    assert any(p.op == "LayerNormalization" for p in raw)


def test_rewrites_are_exact(tiny_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = {
        "vision": {
            "pixel_values": rng.standard_normal((2, 1024, 768)).astype(np.float32),
            "pixel_attention_mask": np.ones((2, 1024), np.int64),
            "pos_weights": np.stack([position_weights(32, 32), position_weights(26, 36)]),
            "unshuffle_index": np.stack([unshuffle_index(32, 32), unshuffle_index(26, 36)]),
        },
        "text": {
            "inputs_embeds": rng.standard_normal((2, 9, 64)).astype(np.float32),
            "attention_mask": np.array([[0, 0] + [1] * 7, [1] * 9], np.int64),
        },
    }
    for graph, f in feeds.items():
        src = tiny_bundle / "fp32" / f"{graph}.onnx"
        ref = ort.InferenceSession(str(src)).run(None, f)[0]
        for version in ("8.5", "8.6"):
            path = prepare_for_trt(src, tmp_path, version)
            model = onnx.load(str(path))
            assert model.opset_import[0].version == 17
            ops = {n.op_type for n in model.graph.node}
            had = "LayerNormalization" in {n.op_type for n in onnx.load(str(src)).graph.node}
            assert ("LayerNormalization" in ops) == (had and version == "8.6")
            got = ort.InferenceSession(str(path)).run(None, f)[0]
            assert np.abs(got - ref).max() < 1e-5
        assert prepare_for_trt(src, tmp_path, "10.1") == src


def _bad_graph(path: Path) -> Path:
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dyn_quant"),
        helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Resize", ["qf", "", "scales"], ["y"], mode="linear", antialias=1, name="aa_resize"),
    ]
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scales],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_preflight_catches_a_bad_graph(tmp_path: Path) -> None:
    path = _bad_graph(tmp_path / "bad.onnx")
    problems = preflight(path, "bad", "10.1", [{"x": [[1, 3, 8, 8], [1, 3, 8, 8], [2, 3, 9, 8]]}])
    text = [str(p) for p in problems]
    assert any("bad:dyn_quant (DynamicQuantizeLinear): not supported by TensorRT 10.1" in t for t in text)
    assert any("bad:aa_resize (Resize): antialias=1" in t for t in text)
    assert any("x (input): profile 0 shape [2, 3, 9, 8]" in t for t in text)
    with pytest.raises(ValueError, match="unknown TensorRT version"):
        preflight(path, "bad", "7.0")


def _engine_manifest(**kw) -> dict:
    return {"schema_version": ENGINE_SCHEMA_VERSION, "file": "text.engine", "tensorrt_version": "10.3.0",
            "compute_capability": "8.7", **kw}  # fmt: skip


def test_engine_manifest_refusals() -> None:
    check_engine(_engine_manifest(), "10.3.0", "8.7")
    check_engine(_engine_manifest(), "10.3.0", None)  # capability unknown: the version still decides
    with pytest.raises(ModelFilesError, match=r"built with TensorRT 10\.3\.0, this device has 8\.6\.2"):
        check_engine(_engine_manifest(), "8.6.2", "8.7")
    with pytest.raises(ModelFilesError, match=r"compute capability 8\.7, this GPU is 8\.9"):
        check_engine(_engine_manifest(), "10.3.0", "8.9")
    with pytest.raises(ModelFilesError, match="schema"):
        check_engine(_engine_manifest(schema_version=0), "10.3.0", "8.7")


def test_build_engines_where_tensorrt_exists(tiny_bundle: Path, tmp_path: Path) -> None:
    trt = pytest.importorskip(
        "tensorrt", reason="tensorrt is not installed here (engines build on a Jetson or a GPU box)"
    )
    import shutil

    from export.trt import run_trt

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    assert run_trt(TrtConfig(str(b), "fp16", "desktop"), dry_run=False, log=lambda m: None) == 0
    assert (b / "trt" / "desktop-fp16" / "engines.json").is_file(), trt.__version__


def test_engine_planning_needs_no_torch(tiny_bundle: Path) -> None:
    """On a Jetson the engine build runs from the bundle with onnx + tensorrt, without torch."""
    script = (
        "import sys\n"
        "for n in ('torch', 'transformers', 'torchvision'): sys.modules[n] = None\n"
        "from export.__main__ import main\n"
        f"sys.exit(main(['--target', 'trt', '--bundle', {str(tiny_bundle)!r}, '--precision', 'fp16', '--dry-run']))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "(dry run: nothing built; no TensorRT installed here)" in res.stdout


def test_device_estimates_schema(tiny_bundle: Path) -> None:
    """The estimate script runs on any bundle; the schema, not the numbers, is checked."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "device_estimates.py"
    spec = importlib.util.spec_from_file_location("device_estimates", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.estimate(tiny_bundle)
    assert set(result["flops"]) == {"page_512", "page_a4", "query_20"}
    assert result["flops"]["page_512"]["vision"] > 0 and result["flops"]["query_20"]["text"] > 0
    devices = {r["device"] for r in result["rows"]}
    assert devices == {"orin-nano-8gb", "orin-nx-16gb", "agx-orin-64gb", "raspberry-pi-5"}
    for row in result["rows"]:
        assert set(row["seconds"]) == {"page_512", "page_a4", "query_20"} and min(row["seconds"].values()) > 0
    assert "efficiency" in result["method"].lower()


def test_trt_from_model_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    res = _cli("--target", "trt", "--model", "tiny", "--out", str(out), "--precision", "int8", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "int8-qdq" in res.stdout and "then: engine plan" in res.stdout and not out.exists()
    res = _cli("--target", "trt", "--bundle", str(tmp_path), "--precision", "fp32", "--dry-run")
    assert res.returncode == 2 and "must be fp16 or int8" in res.stderr
