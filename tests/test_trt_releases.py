"""TensorRT 8.6, 10.3, 10.13 and 11.4, and cuda-python 12 and 13, as strict fakes of their real
API surfaces (``tests/fake_trt.py``): which build path each takes, which calls it makes, which
ONNX file each engine is built from, engine validation, and the runner's buffers and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_trt import CUDA_RELEASES, TRT_RELEASES, FakeDevice, install, make_tensorrt

from export.trt import BUILD_PATHS, TrtConfig, build_path, run_trt
from runtime import ColLFM2, ColLFM2Processor, ModelFilesError, UserError
from runtime.stores.local.index import bundle_identity

CUDA_FOR = {"8.6.1": "12.6.2.post1", "10.3.0": "12.6.2.post1", "10.13.3.9": "13.0.3", "11.4.0.106": "13.0.3"}


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    return b


def _build(monkeypatch: pytest.MonkeyPatch, bundle: Path, release: str, precision: str, validate: bool = True):
    calls: list = []
    device = FakeDevice()
    install(monkeypatch, release, CUDA_FOR[release], calls, device)
    rc = run_trt(TrtConfig(str(bundle), precision, "desktop", validate=validate), dry_run=False, log=lambda m: None)
    out = bundle / "trt" / f"desktop-{precision}"
    return rc, calls, json.loads((out / "engines.json").read_text()), device


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("release", TRT_RELEASES)
def test_build_path_per_release(monkeypatch: pytest.MonkeyPatch, bundle: Path, release: str, precision: str) -> None:
    rc, calls, meta, device = _build(monkeypatch, bundle, release, precision)
    strong = int(release.split(".")[0]) >= 10
    assert rc == 0 and meta["validation"]["passed"], meta.get("validation")
    networks = [c[1] for c in calls if c[0] == "create_network"]
    flags = [c[1] for c in calls if c[0] == "set_flag"]
    parsed = [Path(c[1]) for c in calls if c[0] == "parse_from_file"]
    pinned = [c for c in calls if c[0] == "layer.precision"]
    assert len(networks) == 2
    if strong:  # types from the graph: no precision flag, no pinned layer, no EXPLICIT_BATCH
        assert all(n == ["STRONGLY_TYPED"] for n in networks) and flags == [] and pinned == []
        source = "fp16" if precision == "fp16" else "int8-qdq"
        assert [p.parent.name for p in parsed] == [source, source]  # the bundle's own graphs
    else:
        assert all(n == ["EXPLICIT_BATCH"] for n in networks)
        want = ["FP16", "OBEY_PRECISION_CONSTRAINTS"] if precision == "fp16" else ["FP16", "INT8"]
        assert flags == want * 2
        assert (len(pinned) > 0) == (precision == "fp16") and all(p[2] == "FLOAT" for p in pinned)
        source = "fp32" if precision == "fp16" else "int8-qdq"
        assert all(p.parent.name == "onnx" and ".trt8.6." in p.name for p in parsed)  # the opset-17 rewrite
    assert meta["source_precision"] == source and meta["build_path"] == build_path(release).name
    assert {e["graph"] for e in meta["engines"]} == {"vision", "text"}
    for e in meta["engines"]:
        assert e["tensorrt_version"] == release and e["compute_capability"] == "8.7" and len(e["sha256"]) == 64
        assert e["onnx"].startswith(f"{source}/")
    assert set(meta["validation"]) >= {"vision", "text", "passed", "gate"}
    assert not device.live and not device.streams  # validation freed every buffer and stream


def test_the_fakes_are_as_strict_as_the_releases() -> None:
    """The removed weak-typing API is gone from 11.4 (so the old unconditional FP16 flag fails there)."""
    calls: list = []
    t11, t10, t8 = make_tensorrt("11.4.0.106", calls), make_tensorrt("10.3.0", calls), make_tensorrt("8.6.1", calls)
    for removed in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"):
        assert hasattr(t10.BuilderFlag, removed)
        with pytest.raises(AttributeError):
            getattr(t11.BuilderFlag, removed)
    with pytest.raises(AttributeError):
        _ = t11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    assert not hasattr(t8.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    layer = t11.ILayer("n", "Softmax")
    with pytest.raises(AttributeError, match="precision"):
        layer.precision = t11.float32
    assert [build_path(v).name for v in ("8.5.2", "8.6.2", "10.3.0", "10.16.1", "11.4.1")] == [
        "weakly typed", "weakly typed", "strongly typed", "strongly typed", "strongly typed"]  # fmt: skip
    assert set(BUILD_PATHS) == {8, 10, 11}


def test_strongly_typed_needs_the_fp16_graphs(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["precisions"]["fp16"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    install(monkeypatch, "10.3.0", "12.6.2.post1", [])
    with pytest.raises(RuntimeError, match=r"fp16 graphs, which the bundle lacks; export with --precision \.\.\.,fp16"):
        run_trt(TrtConfig(str(bundle), "fp16", "desktop"), dry_run=False, log=lambda m: None)
    install(monkeypatch, "8.6.1", "12.6.2.post1", [])
    assert run_trt(TrtConfig(str(bundle), "fp16", "desktop"), dry_run=False, log=lambda m: None) == 0  # 8.x: fp32


def test_an_engine_that_fails_validation_is_refused(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    """A wrong engine (here: built from the text graph of another model) fails against ORT fp32,
    is written with its report, and the runtime will not load it."""
    import onnx
    from onnx import numpy_helper

    fp16 = bundle / "fp16" / "text.onnx"
    model = onnx.load(str(fp16))
    for init in model.graph.initializer:  # another set of weights: the engine computes something else
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float16 and arr.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[::-1]), init.name))
    onnx.save(model, str(fp16))
    manifest = json.loads((bundle / "manifest.json").read_text())
    from runtime.bundle.manifest import sha256_file

    manifest["files"]["fp16/text.onnx"] = sha256_file(fp16)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, _, meta, _ = _build(monkeypatch, bundle, "10.3.0", "fp16")
    assert rc == 1 and meta["validation"]["passed"] is False
    assert any(f.startswith("text:") for f in meta["validation"]["failures"])
    with pytest.raises(ModelFilesError, match="failed validation"):
        ColLFM2.from_pretrained(bundle, backend="trt")


@pytest.mark.parametrize("cuda", [*CUDA_RELEASES, "legacy-12"])
def test_runner_under_cuda_python(monkeypatch: pytest.MonkeyPatch, bundle: Path, cuda: str) -> None:
    """cuda-python 12.6 (both import paths), 13.0 (cuda.bindings only) and a 12.x before 12.6
    (cuda.cudart only): the same runner, the same answers as ONNX Runtime fp32."""
    _build(monkeypatch, bundle, "10.3.0", "fp16", validate=False)
    device = FakeDevice()
    release = "12.6.2.post1" if cuda == "legacy-12" else cuda
    install(monkeypatch, "10.3.0", release, [], device, legacy_cuda=cuda == "legacy-12")
    model = ColLFM2.from_pretrained(bundle, backend="trt")
    ref = ColLFM2.from_pretrained(bundle, precision="fp16")
    proc = ColLFM2Processor.from_pretrained(bundle)
    page = proc.process_images([np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)])
    q = proc.process_queries(["net income"])
    for batch in (page, q):
        np.testing.assert_allclose(model(**batch), ref(**batch), atol=2e-3)
    assert model.precision.startswith("trt/desktop-fp16@") and model.engines["source_precision"] == "fp16"
    identity = bundle_identity(model.bundle, model.precision)
    assert identity["precision"] == model.precision  # an index records the engine set, not an ONNX precision


def test_runner_profiles_buffers_and_errors(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    from runtime.encoder.trt import TrtEngine, load_engines

    _build(monkeypatch, bundle, "11.4.0.106", "fp16", validate=False)
    calls: list = []
    device = FakeDevice()
    install(monkeypatch, "11.4.0.106", "13.0.3", calls, device)
    engines, meta = load_engines(bundle)
    text = engines["text"]
    rng = np.random.default_rng(1)

    def feeds(b: int, s: int) -> dict:
        return {"inputs_embeds": rng.standard_normal((b, s, 64)).astype(np.float32),
                "attention_mask": np.ones((b, s), np.int64)}  # fmt: skip

    text.run(feeds(1, 12))  # a query: profile 0
    text.run(feeds(1, 200))  # a page: profile 1, larger buffers
    after_growth = device.mallocs
    text.run(feeds(1, 150))  # smaller: the buffers are reused
    assert device.mallocs == after_growth
    assert [c[1] for c in calls if c[0] == "set_optimization_profile_async"] == [0, 1]  # switched once each
    with pytest.raises(UserError, match="outside every optimisation profile"):
        text.run(feeds(1, 5000))
    with pytest.raises(UserError, match="missing input"):
        text.run({"inputs_embeds": feeds(1, 4)["inputs_embeds"]})
    for e in engines.values():
        e.close()
    assert not device.live and not device.streams
    with pytest.raises(RuntimeError, match="closed"):
        text.run(feeds(1, 12))
    engine_file = bundle / "trt" / meta["dir"] / "text.engine"
    engine_file.write_bytes(engine_file.read_bytes().replace(b'"profiles"', b'"profileZ"'))
    with pytest.raises(ModelFilesError, match="sha256"):
        TrtEngine(engine_file, next(m["sha256"] for m in meta["engines"] if m["graph"] == "text"))
    with pytest.raises(ModelFilesError, match=r"built with TensorRT 11\.4\.0\.106, this device has 10\.3\.0"):
        install(monkeypatch, "10.3.0", "12.6.2.post1", [])
        load_engines(bundle)


def test_missing_cuda_python_or_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    _build(monkeypatch, bundle, "10.3.0", "fp16", validate=False)
    install(monkeypatch, "10.3.0", None, [])
    with pytest.raises(UserError, match=r"cuda-python>=12\.6,<13"):
        ColLFM2.from_pretrained(bundle, backend="trt")
    install(monkeypatch, None, "13.0.3", [])
    with pytest.raises(UserError, match="needs TensorRT"):
        ColLFM2.from_pretrained(bundle, backend="trt")


def test_dockerfiles_pin_cuda_python_to_the_jetpack_cuda() -> None:
    root = Path(__file__).resolve().parents[1] / "jetson"
    jp6 = (root / "Dockerfile.jp6").read_text()
    assert 'ARG CUDA_PYTHON="cuda-python>=12.6,<13"' in jp6 and '"${CUDA_PYTHON}"' in jp6
    installs = [line for line in jp6.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert installs and all("cuda-python " not in line and 'cuda-python"' not in line for line in installs)


def _check_device():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "jetson" / "check_device.py"
    spec = importlib.util.spec_from_file_location("check_device", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_check_device_writes_its_result(monkeypatch: pytest.MonkeyPatch, bundle: Path, tmp_path: Path) -> None:
    """The one Jetson command, here on the fakes: device facts, engines, page/query/search timings."""
    cd = _check_device()
    assert cd.parse_l4t("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic") == "36.4.3"
    assert cd.jetpack_for("36.4.3") == "6.2" and cd.jetpack_for("36.3.0") == "6.0" and cd.jetpack_for("99.1") is None
    _build(monkeypatch, bundle, "10.3.0", "fp16")
    install(monkeypatch, "10.3.0", "12.6.2.post1", [], FakeDevice())
    out = tmp_path / "results"
    rc = cd.main(["--bundle", str(bundle), "--profile", "desktop", "--skip-build", "--runs", "2", "--pages", "30",
                  "--out", str(out)])  # fmt: skip
    assert rc == 0
    (result_file,) = out.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["schema"] == "collfm2-edge-device/1" and result["device"]["tensorrt"] == "10.3.0"
    assert result["device"]["compute_capability"] == "8.7"
    assert result["engines"]["validation"]["passed"] is True
    for stage in ("page_512", "query", "search"):
        assert result["benchmark"][stage]["p50_ms"] > 0 and "power" in result["benchmark"][stage]
    assert result["benchmark"]["search"]["pages"] == 30
