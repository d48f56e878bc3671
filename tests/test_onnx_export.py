"""ONNX export on the tiny preset: graphs, precisions, fidelity targets, bundle contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.graphs import EXPORT_ATTENTION, TextGraph, VisionGraph, attention, grouped_attention
from export.parity import compare, maxsim_rel_error
from export.recipes import FAKE_QUANT, GATES, METHODS, RECIPES, Precision
from export.validate import synthetic_page
from runtime import ColLFM2, ColLFM2Processor, ModelFilesError, open_bundle, score
from runtime.bundle.manifest import MANIFEST, sha256_file
from runtime.cpu import CPU_CLASSES
from runtime.errors import InputError
from runtime.preprocess.image import position_weights, unshuffle_index
from runtime.preprocess.processor import real_rows

ALL = tuple(p.value for p in Precision)


@pytest.fixture(scope="module")
def pages_and_queries(tiny_bundle: Path, tiny_model):
    """Inputs that are not the export's validation grid, and the reference's embeddings of them."""
    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    images = [synthetic_page(300, 700, seed=21), synthetic_page(1100, 800, seed=22), synthetic_page(64, 64, seed=23)]
    queries = ["net income", "a much longer query about the shipping address on page two", "x"]
    pb, qb = proc.process_images(images), proc.process_queries(queries)
    ref_pages = tiny_model.encode(pb)
    ref_queries = tiny_model.encode(qb)
    return pb, qb, ref_pages, ref_queries


def _top1_within_margin(s_ref: np.ndarray, s_got: np.ndarray, margin: float) -> list[int]:
    """Queries whose candidate top-1 page scores, by the reference, more than ``margin`` (relative)
    below the reference's best. On random weights two pages can score within a precision's error
    of each other; either is then a correct answer, so ranks are compared with that margin."""
    bad = []
    for q, (ref, got) in enumerate(zip(s_ref, s_got, strict=True)):
        best = ref.max()
        if ref[int(np.argmax(got))] < best - margin * abs(best):
            bad.append(q)
    return bad


@pytest.mark.parametrize("precision", ALL)
def test_fidelity_targets(tiny_bundle: Path, pages_and_queries, precision: str) -> None:
    pb, qb, ref_pages, ref_queries = pages_and_queries
    model = ColLFM2.from_pretrained(tiny_bundle, precision=precision)
    pages, queries = model(**pb), model(**qb)
    assert pages.dtype == np.float32 and pages.shape == (*pb["input_ids"].shape, 128)
    # Padded rows are exactly zero, real rows unit norm.
    assert not pages[pb["attention_mask"] == 0].any() and not queries[qb["attention_mask"] == 0].any()
    got_p, got_q = real_rows(pages, pb["attention_mask"]), real_rows(queries, qb["attention_mask"])
    gate = GATES[Precision(precision)]
    s_ref, s_got = score(ref_queries, ref_pages), score(got_q, got_p)
    rel = maxsim_rel_error(s_ref, s_got)
    for ref, got, maxsim in ((ref_pages, got_p, rel), (ref_queries, got_q, None)):
        fid = compare(ref, got)
        assert not gate.failures(fid.mean_cos, fid.worst_cos, fid.max_abs, True, maxsim), (precision, fid, rel)
    # A ranking can only be as exact as the scores: allow twice the precision's MaxSim error.
    margin = 2 * (gate.max_maxsim_rel_error or 2e-2)
    assert not _top1_within_margin(s_ref, s_got, margin), (precision, s_ref, s_got)


def test_rank_margin_check_can_fail() -> None:
    ref = np.array([[1.00, 0.50], [0.30, 0.31]])
    assert _top1_within_margin(ref, ref, 0.0) == []
    assert _top1_within_margin(ref, np.array([[0.4, 0.9], [0.30, 0.31]]), 0.04) == [0]  # a real swap
    assert _top1_within_margin(ref, np.array([[1.0, 0.5], [0.32, 0.30]]), 0.04) == []  # within the margin


def test_manifest_contract(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / MANIFEST).read_text())
    assert m["schema_version"] == 1 and m["opset"] >= 18
    assert m["model"]["patch_buckets"] == [256, 512, 768, 1024]
    assert m["source"] == {"kind": "preset", "preset": "tiny", "seed": 0, "random_weights": True}
    assert set(m["precisions"]) == set(ALL) and m["default_precision"] == "fp32"
    for v in ("torch", "transformers", "onnx", "onnxruntime"):
        assert m["versions"][v]
    assert m["validation"]["passed"] is True
    for rel, digest in m["files"].items():
        assert sha256_file(tiny_bundle / rel) == digest
    for name, entry in m["precisions"].items():
        recipe = RECIPES[Precision(name)]
        assert entry["embeddings"]["dtype"] == recipe.embeddings_dtype
        assert np.load(tiny_bundle / entry["embeddings"]["file"], allow_pickle=False).dtype == recipe.embeddings_dtype
        assert entry["size_bytes"] > 0
        for graph in ("vision", "text"):
            g = entry["graphs"][graph]
            assert g["method"] in recipe.methods and g["passed"] is True
            if len(recipe.methods) > 1:
                assert g["why"] and g["tried"]
        vision, text = entry["graphs"]["vision"], entry["graphs"]["text"]
        assert [i["name"] for i in vision["inputs"]] == [
            "pixel_values", "pixel_attention_mask", "pos_weights", "unshuffle_index"
        ]  # fmt: skip
        assert vision["inputs"][0]["shape"] == ["batch", "patches", 768]  # run on patch-count buckets
        assert vision["inputs"][3]["shape"] == ["batch", "tokens", 4]
        assert vision["outputs"][0]["shape"][-1] == 64
        assert text["inputs"][0]["shape"] == ["batch", "sequence", 64]
        assert text["outputs"][0] == {"name": "embeddings", "dtype": "float32", "shape": ["batch", "sequence", 128]}
    # Whichever way the gate went, the record says why, and where it measured.
    for name in ("int8", "int8-qdq"):
        entry = m["precisions"][name]
        for graph in entry["graphs"].values():
            assert graph["why"].startswith(graph["method"])
        assert entry["gated_on"]["cpu_class"] in CPU_CLASSES
    assert m["precisions"]["int8-qdq"]["session_config"] == dict(FAKE_QUANT)
    assert m["precisions"]["int8"]["session_config"] == {}
    assert m["validation"]["pipeline"]["int8"]["host"]["cpu_class"] in CPU_CLASSES
    probe = m["selftest"]
    assert len(probe["pages"]) == 2 and probe["queries"] and probe["reference"] in m["files"]


# What each method leaves in a graph: (ops that must be there, ops that must not).
METHOD_OPS = {
    "fp32": (set(), {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "MatMulNBits"}),
    "fp16": (set(), {"QuantizeLinear", "MatMulInteger", "MatMulNBits"}),
    "dynamic-int8": ({"DynamicQuantizeLinear", "MatMulInteger"}, {"MatMulNBits", "QuantizeLinear"}),
    "weight-only-int8": ({"MatMulNBits"}, {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear"}),
    "static-qdq": ({"QuantizeLinear", "DequantizeLinear"}, {"MatMulInteger", "MatMulNBits"}),
    "weight-only-qdq": ({"DequantizeLinear"}, {"QuantizeLinear", "MatMulInteger", "MatMulNBits"}),
}


def test_graph_files(tiny_bundle: Path) -> None:
    """Each graph holds what the method the gate recorded for it produces, whichever it chose."""
    assert set(METHOD_OPS) == set(METHODS)
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    for p in ALL:
        for g in ("vision", "text"):
            model = onnx.load(str(tiny_bundle / p / f"{g}.onnx"))
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
            found = {n.op_type for n in model.graph.node}
            # The data-dependent ops of upstream's forward stay out of the graphs (DESIGN.md, "Two static graphs").
            assert not found & {"NonZero", "ScatterND", "Resize", "Loop", "If"}
            method = manifest["precisions"][p]["graphs"][g]["method"]
            must, must_not = METHOD_OPS[method]
            assert must <= found and not must_not & found, (p, g, method, sorted(found))
            if g == "vision":
                assert "GatherElements" in found
            if method == "dynamic-int8":
                # |w| <= 64 is the bound under which no int8 kernel clips (AVX2's int16 pair sums:
                # 2 * 255 * 64 = 32,640); tests/test_cpu_classes.py probes it on each CPU class.
                inits = {i.name: i for i in model.graph.initializer}
                weights = [onnx.numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
                           if n.op_type == "MatMulInteger" and n.input[1] in inits]  # fmt: skip
                assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64, (p, g)


@pytest.mark.parametrize("bucket", [None, "smallest"])
@pytest.mark.parametrize("shapes", [[(32, 32), (26, 36)], [(2, 2), (4, 62), (62, 4)], [(20, 50), (38, 26), (16, 16)]])
def test_vision_graph_every_tile_shape(tiny_bundle: Path, tiny_model, shapes, bucket) -> None:
    """Position interpolation and unshuffle, against transformers, for shapes preprocessing makes:
    non-square, fewer than 256 tokens, mixed in one batch; at 1,024 patches and at the smallest
    patch-count bucket that holds them (transformers always pads to 1,024)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    n = len(shapes)
    pv = rng.standard_normal((n, 1024, 768)).astype(np.float32)
    mask = np.zeros((n, 1024), np.int64)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
    with torch.inference_mode():
        ref = tiny_model.model.get_image_features(
            pixel_values=torch.from_numpy(pv),
            spatial_shapes=torch.tensor(shapes),
            pixel_attention_mask=torch.from_numpy(mask),
        ).pooler_output
    sess = ort.InferenceSession(str(tiny_bundle / "fp32" / "vision.onnx"), providers=["CPUExecutionProvider"])
    size = 1024 if bucket is None else -(-max(h * w for h, w in shapes) // 256) * 256
    feeds = {
        "pixel_values": pv[:, :size],
        "pixel_attention_mask": mask[:, :size],
        "pos_weights": np.stack([position_weights(h, w, max_patches=size) for h, w in shapes]),
        "unshuffle_index": np.stack([unshuffle_index(h, w, max_tokens=size // 4) for h, w in shapes]),
    }
    got = sess.run(None, feeds)[0]
    for i, r in enumerate(ref):
        fid = compare(r.numpy(), got[i, : r.shape[0]])
        assert fid.worst_cos > 0.999999 and fid.max_abs < 1e-4, (shapes[i], fid)


def test_text_graph_padding(tiny_bundle: Path) -> None:
    """Left padding, right padding and batch 1 give the unpadded rows; padded rows are 0, never NaN."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny_bundle / "fp32" / "text.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 6, 64)).astype(np.float32)
    alone = sess.run(None, {"inputs_embeds": x, "attention_mask": np.ones((1, 6), np.int64)})[0][0]
    pad = rng.standard_normal((1, 4, 64)).astype(np.float32) * 50  # junk that must not leak through the conv
    left = np.concatenate([pad, x], axis=1)
    right = np.concatenate([x, pad], axis=1)
    lmask = np.array([[0] * 4 + [1] * 6], np.int64)
    rmask = lmask[:, ::-1].copy()
    for emb, m, rows in ((left, lmask, slice(4, 10)), (right, rmask, slice(0, 6))):
        out = sess.run(None, {"inputs_embeds": emb, "attention_mask": m})[0][0]  # batch 1, padded
        assert np.isfinite(out).all()
        assert np.abs(out[rows] - alone).max() < 1e-5
        assert not out[m[0] == 0].any()
    both = sess.run(
        None, {"inputs_embeds": np.concatenate([left, right]), "attention_mask": np.concatenate([lmask, rmask])}
    )[0]
    assert np.abs(both[0, 4:] - alone).max() < 1e-5 and np.abs(both[1, :6] - alone).max() < 1e-5


def test_wrappers_match_reference_model(tiny_model) -> None:
    """The export wrappers (eager, our masks) equal the reference model's whole forward."""
    proc_ids = torch.tensor([[0, 0, 1, 5, 9, 13], [1, 7, 8, 2, 3, 4]])
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.inference_mode():
        ref = tiny_model(proc_ids, am)
        embeds = tiny_model.model.language_model.embed_tokens(proc_ids)
        with attention(tiny_model, EXPORT_ATTENTION):
            got = TextGraph(tiny_model)(embeds, am)
    keep = am.bool()
    assert torch.allclose(ref[keep], got[keep], atol=1e-5)
    assert not got[~keep].any()
    assert VisionGraph(tiny_model).patch_embedding is tiny_model.model.vision_tower.embeddings.patch_embedding


# -- the bundle contract -------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_refuses_tampered_file(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path / "b")
    with open(b / "fp32" / "text.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelFilesError, match="sha256"):
        ColLFM2.from_pretrained(b, precision="fp32")
    ColLFM2.from_pretrained(b, precision="fp16")  # only the files a precision uses are checked


def test_refuses_wrong_schema_and_format(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path / "b")
    m = json.loads((b / MANIFEST).read_text())
    (b / MANIFEST).write_text(json.dumps({**m, "schema_version": 99}))
    with pytest.raises(ModelFilesError, match="schema version 99"):
        open_bundle(b)
    (b / MANIFEST).write_text(json.dumps({**m, "format": "something-else"}))
    with pytest.raises(ModelFilesError, match="format"):
        open_bundle(b)
    (b / MANIFEST).write_text("{not json")
    with pytest.raises(ModelFilesError, match="JSON"):
        open_bundle(b)
    (b / MANIFEST).unlink()
    with pytest.raises(ModelFilesError, match=r"no manifest\.json"):
        open_bundle(b)
    with pytest.raises(ModelFilesError, match="no such bundle"):
        open_bundle(tmp_path / "nowhere")


def test_missing_file_and_precision(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path / "b")
    (b / "int8" / "vision.onnx").unlink()
    with pytest.raises(ModelFilesError, match="missing"):
        ColLFM2.from_pretrained(b, precision="int8")
    m = json.loads((b / MANIFEST).read_text())
    del m["precisions"]["fp16"]
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ModelFilesError, match="no 'fp16' graphs"):
        ColLFM2.from_pretrained(b, precision="fp16")


def test_never_unpickles(tiny_bundle: Path, tmp_path: Path) -> None:
    """A pickled (object) embedding table is refused even when its hash is listed."""
    b = _copy(tiny_bundle, tmp_path / "b")
    rel = "fp32/embeddings.npy"
    np.save(b / rel, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    m = json.loads((b / MANIFEST).read_text())
    m["files"][rel] = sha256_file(b / rel)
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ModelFilesError, match="embedding table"):
        ColLFM2.from_pretrained(b, precision="fp32")


def test_batch_mismatch_is_refused(tiny_bundle: Path) -> None:
    from runtime import InputError

    model = ColLFM2.from_pretrained(tiny_bundle)
    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    a = proc.process_images([synthetic_page(512, 512)])
    b = proc.process_images([synthetic_page(900, 300)])
    with pytest.raises(InputError, match="image tokens"):
        model(**{**a, "pixel_values": b["pixel_values"], "pixel_attention_mask": b["pixel_attention_mask"],
                 "spatial_shapes": b["spatial_shapes"]})  # fmt: skip
    q = proc.process_queries(["hi"])
    with pytest.raises(InputError, match="no pixel_values"):
        model(input_ids=a["input_ids"], attention_mask=a["attention_mask"])
    with pytest.raises(InputError, match="out of range"):
        model(input_ids=q["input_ids"] + 10**6, attention_mask=q["attention_mask"])


def test_output_dtype(tiny_bundle: Path) -> None:
    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    q = proc.process_queries(["net income"])
    full = ColLFM2.from_pretrained(tiny_bundle)(**q)
    half = ColLFM2.from_pretrained(tiny_bundle, output_dtype="float16")(**q)
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - full).max() < 1e-3
    with pytest.raises(InputError, match="output_dtype"):
        ColLFM2.from_pretrained(tiny_bundle, output_dtype="int8")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_vision_batch_changes_only_memory(tiny_bundle: Path, precision: str) -> None:
    """Tiles one at a time (the CPU default) or several per call give the same page: exactly in
    fp32; in int8 within the gate, since dynamic int8 takes one activation scale per call."""
    from runtime.encoder.model import DEFAULT_VISION_BATCH, default_vision_batch

    assert default_vision_batch("ort-cpu") == 1 and default_vision_batch("ort-cuda") == DEFAULT_VISION_BATCH > 1
    assert ColLFM2.from_pretrained(tiny_bundle).vision_batch == 1
    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    page = proc.process_images([np.random.default_rng(1).integers(0, 256, (1700, 1200, 3), dtype=np.uint8)])
    assert page["pixel_values"].shape[0] > 3  # tiled, so batching has something to group
    one = ColLFM2.from_pretrained(tiny_bundle, precision=precision)(**page)
    three = ColLFM2.from_pretrained(tiny_bundle, precision=precision, vision_batch=3)(**page)
    if precision == "fp32":
        np.testing.assert_allclose(one, three, atol=1e-5)
    else:
        mask = page["attention_mask"] > 0
        assert compare(one[mask], three[mask]).worst_cos >= GATES[Precision.INT8].min_worst_cos


def test_unknown_provider_says_what_is_there(tiny_bundle: Path) -> None:
    from runtime import UserError

    with pytest.raises(UserError, match="not available here"):
        ColLFM2.from_pretrained(tiny_bundle, providers=["NoSuchExecutionProvider"])


def test_backends_and_default_precision(tiny_bundle: Path) -> None:
    from runtime import UserError
    from runtime.encoder.model import default_precision

    have = ["fp32", "fp16", "int8"]
    dyn, mixed = ["dynamic-int8"] * 2, ["dynamic-int8", "weight-only-int8"]
    assert default_precision("ort-cpu", have, machine="aarch64") == "int8"  # never fp16 on ARM CPUs
    assert default_precision("ort-cpu", have, machine="aarch64", int8_methods=mixed) == "int8"
    # x86: int8 only where it was measured faster than fp32 (dynamic int8 in both graphs).
    assert default_precision("ort-cpu", have, machine="x86_64", int8_methods=dyn) == "int8"
    assert default_precision("ort-cpu", have, machine="x86_64", int8_methods=mixed) == "fp32"
    assert default_precision("ort-cpu", have, machine="x86_64") == "fp32"
    assert default_precision("ort-cuda", have) == default_precision("trt", have) == "fp16"
    assert default_precision("ort-cpu", ["fp16"], machine="aarch64") == "fp16"  # only what the bundle has
    bundle = open_bundle(tiny_bundle, verify=False)
    want = default_precision("ort-cpu", bundle.precisions, int8_methods=bundle.methods("int8"))
    assert ColLFM2.from_pretrained(tiny_bundle).precision == want
    with pytest.raises(UserError, match="unknown backend"):
        ColLFM2.from_pretrained(tiny_bundle, backend="tpu")


def test_missing_gpu_stacks_say_what_to_install(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without them, whatever this one has: ORT without GPU providers, no TensorRT."""
    import sys

    import onnxruntime as ort

    from runtime import UserError

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="install onnxruntime-gpu"):
        ColLFM2.from_pretrained(tiny_bundle, backend="ort-cuda")
    with pytest.raises(UserError, match="built with TensorRT"):
        ColLFM2.from_pretrained(tiny_bundle, backend="ort-trt")
    with pytest.raises(UserError, match="needs TensorRT and cuda-python"):
        ColLFM2.from_pretrained(tiny_bundle, backend="trt")


def test_int8_qdq_runs_as_fake_quantisation(tiny_bundle: Path) -> None:
    """The runtime applies the session settings the manifest records: ORT computes the TensorRT
    graphs' Q/DQ in float instead of fusing them into its CPU int8 kernels."""
    qdq = ColLFM2.from_pretrained(tiny_bundle, precision="int8-qdq")
    for runner in qdq.runners.values():
        assert runner.session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    plain = ColLFM2.from_pretrained(tiny_bundle, precision="int8")
    with pytest.raises(RuntimeError, match="does not have configuration"):
        plain.runners["text"].session.get_session_options().get_session_config_entry("session.disable_quant_qdq")


def test_gate_keeps_the_first_candidate_that_passes(tiny_bundle: Path, tiny_model, tmp_path: Path) -> None:
    """The gate's contract, independent of which method wins on this CPU: the first candidate that
    passes is kept with its reason; with none passing, the last is kept and marked failing."""
    from export.onnx_export import build_precision
    from export.recipes import Gate, Recipe
    from export.validate import reference_set, validation_inputs

    proc = ColLFM2Processor.from_pretrained(tiny_bundle)
    pages, queries = validation_inputs(proc)
    ref = reference_set(tiny_model, proc, {"p": pages["tile-26x36"]}, queries[:2], full_pipeline=False)
    fp32 = {g: tiny_bundle / "fp32" / f"{g}.onnx" for g in ("vision", "text")}

    def build(gate: Gate, name: str) -> dict:
        recipe = Recipe(Precision.INT8, ("dynamic-int8", "weight-only-int8"), "float16", "test", gate)
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(RECIPES, Precision.INT8, recipe)
            return build_precision(Precision.INT8, fp32, tmp_path / name, ref, dict, lambda m: None)

    easy = build(Gate(min_worst_cos=0.0), "easy")
    assert all(r["method"] == "dynamic-int8" and r["passed"] and "first candidate" in r["why"] for r in easy.values())
    impossible = build(Gate(min_worst_cos=1.1), "impossible")
    for r in impossible.values():
        assert r["method"] == "weight-only-int8" and r["passed"] is False
        assert "no candidate passed" in r["why"] and "rejected dynamic-int8" in r["why"]
        assert [t["method"] for t in impossible["text"]["tried"]] == ["dynamic-int8", "weight-only-int8"]
    assert sorted(p.name for p in (tmp_path / "impossible").iterdir()) == ["text.onnx", "vision.onnx"]


@pytest.mark.parametrize(
    "n_heads,n_kv,scaling", [(16, 8, 0.125), (12, 12, 0.125), (6, 3, 0.3), (2, 2, 0.5), (5, 1, 0.125)]
)
def test_grouped_attention_is_eager_attention(n_heads: int, n_kv: int, scaling: float) -> None:
    """Head groups, the folded scale and GQA give transformers' eager attention (to float
    rounding: the power-of-two fold is exact, other scales multiply the scores as eager does)."""
    from transformers.models.lfm2.modeling_lfm2 import eager_attention_forward

    g = torch.Generator().manual_seed(0)
    b, s, d = 2, 9, 8
    q = torch.randn(b, n_heads, s, d, generator=g)
    k = torch.randn(b, n_kv, s, d, generator=g)
    v = torch.randn(b, n_kv, s, d, generator=g)
    mask = torch.where(torch.ones(s, s, dtype=torch.bool).tril(), 0.0, -1.0e4)[None, None].expand(b, 1, s, s)
    module = torch.nn.Module()
    module.num_key_value_groups = n_heads // n_kv
    module.training = False
    want, _ = eager_attention_forward(module, q, k, v, mask, scaling)
    got, weights = grouped_attention(module, q, k, v, mask, scaling)
    assert weights is None and got.shape == want.shape == (b, s, n_heads, d)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_graphs_run_attention_a_head_group_at_a_time(tiny_bundle: Path, tiny_model) -> None:
    """One Softmax per head group and attention layer: no node holds every head's S x S scores."""
    import onnx

    from export.graphs import _groups

    tc, vc = tiny_model.config.text_config, tiny_model.config.vision_config
    want = {
        "text": tc.layer_types.count("full_attention") * _groups(tc.num_key_value_heads),
        "vision": vc.num_hidden_layers * _groups(vc.num_attention_heads),
    }
    for graph, n in want.items():
        g = onnx.load(tiny_bundle / "fp32" / f"{graph}.onnx", load_external_data=False).graph
        assert sum(node.op_type == "Softmax" for node in g.node) == n > 0, graph


def test_graph_contract_is_in_the_manifest_and_checked(tiny_bundle: Path, tmp_path: Path) -> None:
    """The manifest carries each graph's contract; the exported files agree with it; the runtime
    refuses a contract it does not feed and accepts bundles written before contracts existed."""
    from runtime.bundle.contract import GRAPH_SPECS

    m = json.loads((tiny_bundle / MANIFEST).read_text())
    assert m["contract"] == {g: s.as_manifest() for g, s in GRAPH_SPECS.items()}
    for p in ALL:
        for graph, spec in GRAPH_SPECS.items():
            io = m["precisions"][p]["graphs"][graph]
            assert [i["name"] for i in io["inputs"]] == spec.input_names
            assert [i["dtype"] for i in io["inputs"]] == [t.dtype for t in spec.inputs]
    b = _copy(tiny_bundle, tmp_path / "b")
    changed = json.loads(json.dumps(m))
    changed["contract"]["vision"]["inputs"][1]["dtype"] = "int32"
    (b / MANIFEST).write_text(json.dumps(changed))
    with pytest.raises(ModelFilesError, match="not the contract this runtime feeds"):
        ColLFM2.from_pretrained(b, precision="fp32")
    old = {k: v for k, v in m.items() if k != "contract"}
    (b / MANIFEST).write_text(json.dumps(old))
    proc = ColLFM2Processor.from_pretrained(b)
    assert ColLFM2.from_pretrained(b, precision="fp32")(**proc.process_queries(["hi"])).shape[-1] == 128
