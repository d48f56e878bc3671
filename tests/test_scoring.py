"""MaxSim: exact over real rows; reference mode reproduces upstream's padded score_multi_vector."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import score


def _unit_rows(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(qs, ds, clamp=False):
    out = np.zeros((len(qs), len(ds)), np.float64)
    for i, q in enumerate(qs):
        for j, d in enumerate(ds):
            if len(q) and len(d):
                best = (q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1)
                out[i, j] = np.maximum(best, 0).sum() if clamp else best.sum()
    return out


def test_exact_matches_brute_force_across_blocks() -> None:
    rng = np.random.default_rng(0)
    qs = [_unit_rows(rng, n) for n in (3, 17, 1)]
    ds = [_unit_rows(rng, n) for n in (266, 40, 1, 900, 5)]
    for block in (1, 50, 1 << 18):  # block boundaries must not change anything
        np.testing.assert_allclose(score(qs, ds, block_rows=block), _brute(qs, ds), rtol=1e-5, atol=1e-5)


def test_padded_batches_equal_lists() -> None:
    rng = np.random.default_rng(1)
    qs = [_unit_rows(rng, n) for n in (4, 9)]
    ds = [_unit_rows(rng, n) for n in (30, 12)]
    qpad = np.zeros((2, 9, 128), np.float32)
    dpad = np.zeros((2, 30, 128), np.float32)
    qpad[0, 5:] = qs[0]  # left padded, as queries are
    qpad[1] = qs[1]
    dpad[0] = ds[0]
    dpad[1, :12] = ds[1]  # right padded, as upstream collates documents
    np.testing.assert_allclose(score(qpad, dpad), score(qs, ds), rtol=1e-6)


def test_fp16_documents_accumulate_in_fp32() -> None:
    rng = np.random.default_rng(2)
    qs = [_unit_rows(rng, 20)]
    ds = [_unit_rows(rng, 300)]
    got = score(qs, [d.astype(np.float16) for d in ds])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _brute(qs, [d.astype(np.float16).astype(np.float32) for d in ds]), rtol=1e-5)


def test_reference_mode_clamps_like_upstream_padding() -> None:
    rng = np.random.default_rng(3)
    q = [-np.abs(_unit_rows(rng, 2))]  # every dot product with the non-negative docs is < 0
    d_short = [np.abs(_unit_rows(rng, 2))]
    d_long = np.abs(_unit_rows(rng, 5))
    # Same lengths: upstream pads nothing, so no clamp.
    np.testing.assert_allclose(score(q, d_short, mode="reference"), _brute(q, d_short), rtol=1e-6)
    # Mixed lengths: zero rows of padding clamp each max at 0, exactly as score_multi_vector does.
    mixed = [d_short[0], d_long]
    assert (score(q, mixed, mode="exact") < 0).all()
    np.testing.assert_allclose(score(q, mixed, mode="reference"), _brute(q, mixed, clamp=True), atol=1e-6)


def test_reference_mode_matches_upstream_score_multi_vector() -> None:
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("sauerkrautlm_colpali.utils.processing_utils")
    rng = np.random.default_rng(4)
    qs = [_unit_rows(rng, n) for n in (3, 8)]
    ds = [_unit_rows(rng, n) for n in (10, 266, 7)]
    ref = utils.BaseVisualRetrieverProcessor.score_multi_vector(
        [torch.from_numpy(q) for q in qs], [torch.from_numpy(d) for d in ds]
    ).numpy()
    np.testing.assert_allclose(score(qs, ds, mode="reference"), ref, rtol=1e-5, atol=1e-5)


def test_edge_cases() -> None:
    rng = np.random.default_rng(5)
    assert score([], [_unit_rows(rng, 3)]).shape == (0, 1)
    assert score([np.zeros((0, 128), np.float32), _unit_rows(rng, 2)], [_unit_rows(rng, 3)])[0, 0] == 0
    with pytest.raises(ValueError, match="dim"):
        score([_unit_rows(rng, 2, 64)], [_unit_rows(rng, 2)])
    with pytest.raises(ValueError, match="mode"):
        score([_unit_rows(rng, 2)], [_unit_rows(rng, 2)], mode="fast")


def test_fp16_kernel_is_the_graph_it_claims_and_exact() -> None:
    """The embedded ONNX bytes are Cast(fp16 -> fp32) + Gemm(transB=1), and give numpy's numbers."""
    import onnx
    from onnx import TensorProto, helper

    from runtime.scoring import _MAXSIM_F16_ONNX, similarities

    model = onnx.load_from_string(_MAXSIM_F16_ONNX)
    onnx.checker.check_model(model)
    nodes = [
        (n.op_type, list(n.input), {a.name: helper.get_attribute_value(a) for a in n.attribute})
        for n in model.graph.node
    ]
    assert nodes == [("Cast", ["docs"], {"to": TensorProto.FLOAT}), ("Gemm", ["queries", "docs_f32"], {"transB": 1})]
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT, TensorProto.FLOAT16]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((7, 128)).astype(np.float32)
    d = rng.standard_normal((1000, 128)).astype(np.float16)
    np.testing.assert_allclose(similarities(q, d), q @ d.astype(np.float32).T, rtol=1e-5, atol=1e-5)


def test_fp16_and_fp32_documents_score_the_same() -> None:
    rng = np.random.default_rng(3)
    docs = [rng.standard_normal((n, 128)).astype(np.float16) for n in (5, 0, 17, 1)]
    q = [rng.standard_normal((4, 128)).astype(np.float32)]
    np.testing.assert_allclose(score(q, docs), score(q, [d.astype(np.float32) for d in docs]), rtol=1e-5, atol=1e-5)
