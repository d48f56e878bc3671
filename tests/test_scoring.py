"""MaxSim: exact over real rows; reference mode reproduces upstream's padded score_multi_vector."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime import score
from runtime.errors import InputError


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
    with pytest.raises(InputError, match="dim"):
        score([_unit_rows(rng, 2, 64)], [_unit_rows(rng, 2)])
    with pytest.raises(InputError, match="mode"):
        score([_unit_rows(rng, 2)], [_unit_rows(rng, 2)], mode="fast")


def _maxsim_graph(doc_type: int) -> bytes:
    """How runtime.scoring's embedded kernels were built."""
    from onnx import TensorProto, helper

    nodes, src = [], "docs"
    if doc_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["docs"], ["docs_f32"], to=TensorProto.FLOAT))
        src = "docs_f32"
    nodes += [
        helper.make_node("MatMul", [src, "queries_t"], ["sims"]),
        helper.make_node("Reshape", ["sims", "shape"], ["per_doc"]),
        helper.make_node("ReduceMax", ["per_doc", "axis"], ["best"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "maxsim",
        [
            helper.make_tensor_value_info("docs", doc_type, ["rows", "dim"]),
            helper.make_tensor_value_info("queries_t", TensorProto.FLOAT, ["dim", "q"]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [3]),
        ],
        [helper.make_tensor_value_info("best", TensorProto.FLOAT, ["docs_n", "q"])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="collfm2-edge")
    model.ir_version = 9
    return model.SerializeToString()


def test_maxsim_kernels_are_the_graphs_they_claim_and_exact() -> None:
    """The embedded ONNX bytes are exactly (Cast) + MatMul + Reshape + ReduceMax, and give numpy's numbers."""
    import base64

    import onnx
    from onnx import TensorProto

    from runtime.scoring import _MAXSIM_ONNX, run_max

    for dtype, onnx_type in ((np.float16, TensorProto.FLOAT16), (np.float32, TensorProto.FLOAT)):
        built = _maxsim_graph(onnx_type)
        assert _MAXSIM_ONNX[np.dtype(dtype)] == built, base64.b64encode(built).decode()
        onnx.checker.check_model(onnx.load_from_string(built))
        rng = np.random.default_rng(0)
        qt = rng.standard_normal((128, 7)).astype(np.float32)
        d = rng.standard_normal((50 * 9, 128)).astype(dtype)
        want = (d.astype(np.float32) @ qt).reshape(50, 9, 7).max(axis=1)
        np.testing.assert_allclose(run_max(qt, d, 50), want, rtol=1e-5, atol=1e-5)


def test_runs_of_equal_length_and_the_numpy_fallback_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of equal-length documents (one kernel call each), empty documents between them and
    block cuts inside a run all give the brute-force answer, with and without ONNX Runtime."""
    from runtime import scoring

    rng = np.random.default_rng(5)
    lengths = [266] * 7 + [0, 12, 12, 3] + [266] * 5 + [1, 0]
    ds = [_unit_rows(rng, n).astype(np.float16) for n in lengths]
    qs = [_unit_rows(rng, 20), _unit_rows(rng, 0), _unit_rows(rng, 4)]
    offsets = np.cumsum([0, *lengths])
    packed = np.concatenate(ds)
    want = _brute(qs, ds)
    for block in (1, 600, 1 << 14):
        got = scoring.score_packed(qs, packed, offsets, block_rows=block)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(
        scoring, "_sessions", {(np.dtype(t), n): None for t in (np.float16, np.float32) for n in (0, 1)}
    )
    np.testing.assert_allclose(scoring.score_packed(qs, packed, offsets, block_rows=600), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scoring.score(qs, ds, mode="reference"), _brute(qs, ds, clamp=True), atol=1e-4)


def test_fp16_and_fp32_documents_score_the_same() -> None:
    rng = np.random.default_rng(3)
    docs = [rng.standard_normal((n, 128)).astype(np.float16) for n in (5, 0, 17, 1)]
    q = [rng.standard_normal((4, 128)).astype(np.float32)]
    np.testing.assert_allclose(score(q, docs), score(q, [d.astype(np.float32) for d in docs]), rtol=1e-5, atol=1e-5)


def _codes_graph(kind: str) -> bytes:
    """How runtime.scoring's candidate kernels were built: ``run`` for a block of equal-length
    documents (a Reshape, no copy), ``pieces`` for any mix (a Gather of row numbers)."""
    from onnx import TensorProto, helper

    dots = helper.make_node("MatMulInteger", ["codes", "queries_t", "zero"], ["dots"])
    if kind == "run":
        group = helper.make_node("Reshape", ["dots", "shape"], ["grouped"])
        extra = helper.make_tensor_value_info("shape", TensorProto.INT64, [3])
    else:
        group = helper.make_node("Gather", ["dots", "pieces"], ["grouped"], axis=0)
        extra = helper.make_tensor_value_info("pieces", TensorProto.INT32, ["groups", "piece"])
    graph = helper.make_graph(
        [dots, group, helper.make_node("ReduceMax", ["grouped", "axis"], ["best"], keepdims=0)],
        f"maxsim_codes_{kind}",
        [
            helper.make_tensor_value_info("codes", TensorProto.UINT8, ["rows", "dim"]),
            helper.make_tensor_value_info("queries_t", TensorProto.INT8, ["dim", "q"]),
            extra,
        ],
        [helper.make_tensor_value_info("best", TensorProto.INT32, ["groups", "q"])],
        initializer=[
            helper.make_tensor("zero", TensorProto.UINT8, [], [128]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="collfm2-edge")
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("kind", ["run", "pieces"])
def test_candidate_kernel_is_the_graph_it_claims(kind: str) -> None:
    import base64

    import onnx

    from runtime.scoring import _CODES_ONNX

    built = _codes_graph(kind)
    assert built == _CODES_ONNX[kind], base64.b64encode(built).decode()
    onnx.checker.check_model(onnx.load_from_string(built))


def test_quantize_rows_round_trips_within_half_a_step() -> None:
    from runtime.scoring import quantize_rows

    rng = np.random.default_rng(8)
    rows = np.concatenate([_unit_rows(rng, 50), np.zeros((1, 128), np.float32), _unit_rows(rng, 2)])
    rows[-1, 3] = np.nan
    rows[-2, 0] = np.inf
    codes, scale = quantize_rows(rows)
    assert codes.dtype == np.uint8 and scale.dtype == np.float32
    back = (codes[:50].astype(np.float32) - 128) * scale[:50, None]
    assert np.all(np.abs(back - rows[:50]) <= scale[:50, None] * 0.5001)
    assert np.all(np.abs(codes[:50].astype(int) - 128).max(axis=1) == 127)  # each row's peak uses the range
    assert scale[50] == 0 and np.all(codes[50] == 128)  # a zero row
    assert np.isnan(scale[51:]).all() and np.all(codes[51:] == 128)  # non-finite rows: NaN, never garbage codes


def test_quantize_rows_gives_each_document_one_scale() -> None:
    """With offsets, a document's rows share the scale of its largest magnitude (what lets the
    kernel take the max on integers); a non-finite value anywhere makes the whole document NaN."""
    from runtime.scoring import CodeLayout, quantize_rows

    rng = np.random.default_rng(11)
    rows = _unit_rows(rng, 20)
    rows[3] *= 0.2  # a short row in document 0
    offsets = np.array([0, 6, 6, 13, 20])
    codes, scale = quantize_rows(rows, offsets)
    for a, b in itertools.pairwise(offsets):
        if b > a:
            assert np.all(scale[a:b] == np.abs(rows[a:b]).max() / np.float32(127))
            assert np.abs(codes[a:b].astype(int) - 128).max() == 127
    back = (codes.astype(np.float32) - 128) * scale[:, None]
    assert np.all(np.abs(back - rows) <= scale[:, None] * 0.5001)
    assert np.array_equal(CodeLayout.build(offsets).doc_scale(scale), np.array([scale[0], 0, scale[6], scale[13]]))
    rows[8, 5] = np.inf
    codes, scale = quantize_rows(rows, offsets)
    assert np.isnan(scale[6:13]).all() and np.all(codes[6:13] == 128) and np.isfinite(scale[13:]).all()
    for bad in ([0, 6, 19], [1, 20], [0, 12, 6, 20]):
        with pytest.raises(ValueError, match="offsets"):
            quantize_rows(rows, np.array(bad))


@pytest.mark.parametrize("block", [1, 100, 700, 1 << 16])
def test_candidate_scores_approximate_maxsim_and_equal_the_fallback_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Documents of mixed lengths (empty, one row, longer than a piece, runs of equal ones) and
    any block cut: within quantization error of exact MaxSim, and the numpy fallback (exact
    integers) gives the same bits, which is what makes every CPU agree."""
    from runtime import scoring

    rng = np.random.default_rng(9)
    lengths = [12] * 30 + [0, 3, 300, 1, 0, 40, 33, 32] + [12] * 9 + [0]
    ds = [_unit_rows(rng, n) for n in lengths]
    qs = [_unit_rows(rng, 20), _unit_rows(rng, 0), _unit_rows(rng, 4)]
    rows = np.concatenate(ds)
    offsets = np.cumsum([0, *lengths])
    layout = scoring.CodeLayout.build(offsets, block)
    # equal-length blocks take the in-place graph, mixed ones the pieces graph: both are checked
    kinds = {1: {True}, 100: {True, False}}.get(block, {False})
    assert {bool(b.run) for b in layout.blocks} == kinds
    codes, scale = scoring.quantize_rows(rows, offsets)
    scale = layout.doc_scale(scale)
    got = scoring.score_codes(qs, codes, scale, layout)
    want = _brute(qs, ds)
    tokens = np.array([len(q) for q in qs])[:, None]
    assert np.all(np.abs(got - want) <= 0.01 * tokens)
    assert np.all(got[:, np.array(lengths) == 0] == 0) and np.all(got[1] == 0)
    monkeypatch.setitem(scoring._sessions, ("run", 0), None)
    monkeypatch.setitem(scoring._sessions, ("pieces", 0), None)
    assert np.array_equal(scoring.score_codes(qs, codes, scale, layout), got)
    with pytest.raises(ValueError, match="one per document"):
        scoring.score_codes(qs, codes, np.ones(len(rows), np.float32), layout)


def test_a_non_finite_row_makes_only_its_document_nan() -> None:
    from runtime import scoring

    rng = np.random.default_rng(10)
    lengths = [5, 7, 3, 0, 6]
    rows = _unit_rows(rng, sum(lengths))
    offsets = np.cumsum([0, *lengths])
    layout = scoring.CodeLayout.build(offsets)
    q = [_unit_rows(rng, 6)]

    def scores() -> np.ndarray:
        codes, scale = scoring.quantize_rows(rows, offsets)
        return scoring.score_codes(q, codes, layout.doc_scale(scale), layout)

    clean = scores()
    rows[6, 0] = np.nan  # in document 1
    got = scores()
    assert np.isnan(got[0, 1]) and np.array_equal(np.delete(got, 1, axis=1), np.delete(clean, 1, axis=1))
