"""The parity function itself, and the recipe table: they decide what passes, so they are tested."""

from __future__ import annotations

import numpy as np
import pytest

from export.parity import compare, maxsim_rel_error, topk_agreement
from export.recipes import GATES, METHODS, RECIPES, Gate, Precision, parse_precisions
from runtime.errors import InputError


def test_compare_identical_and_masked() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5, 8))
    f = compare(a, a.copy())
    assert f.rows == 10 and f.worst_cos == pytest.approx(1.0) and f.max_abs == 0.0
    b = a.copy()
    b[0, 4] = -b[0, 4]  # one flipped row
    mask = np.ones((2, 5), bool)
    assert compare(a, b).worst_cos == pytest.approx(-1.0)
    mask[0, 4] = False
    assert compare(a, b, mask).worst_cos == pytest.approx(1.0) and compare(a, b, mask).rows == 9
    assert compare([a[0], a[1]], [b[0], b[1]]).rows == 10


def test_compare_never_passes_nan_or_shape_mismatch() -> None:
    a = np.ones((3, 4))
    b = a.copy()
    b[1, 2] = np.nan
    f = compare(a, b)
    assert f.worst_cos == -1.0 and f.max_abs == float("inf")
    assert compare(np.zeros((2, 4)), np.zeros((2, 4))).worst_cos == 1.0  # padded rows agree
    with pytest.raises(InputError, match="shape mismatch"):
        compare(a, np.ones((2, 4)))


def test_maxsim_and_topk() -> None:
    ref = np.array([[3.0, 2.0, 1.0], [1.0, 5.0, 2.0]])
    assert maxsim_rel_error(ref, ref) == 0.0
    assert maxsim_rel_error(ref, ref * (1 + 1e-3)) == pytest.approx(1e-3)
    assert maxsim_rel_error(ref, ref * np.nan) == float("inf")
    assert topk_agreement(ref, ref, 1) == 1.0
    swapped = ref[:, [1, 0, 2]]
    assert topk_agreement(ref, swapped, 1) == 0.0 and topk_agreement(ref, swapped, 2) == 0.75
    assert topk_agreement(ref, swapped, 10) == 1.0  # k clipped to N: every document


def test_recipe_table_is_complete() -> None:
    assert set(RECIPES) == set(Precision) == set(GATES)
    for recipe in RECIPES.values():
        assert all(m in METHODS for m in recipe.methods)
    # fp16 and int8 store the table in fp16 (half the bytes; the graphs cast it).
    assert RECIPES[Precision.FP16].embeddings_dtype == RECIPES[Precision.INT8].embeddings_dtype == "float16"


def test_gate() -> None:
    g = GATES[Precision.INT8]
    assert g.failures(0.996, 0.985, 1.0, unit_norm=True) == []
    assert len(g.failures(0.99, 0.95, 1.0, unit_norm=True)) == 2  # what dynamic int8 on AVX2 used to pass
    assert g.failures(0.999, 0.99, 1.0, True, maxsim_rel_error=3e-2) == ["MaxSim relative error 3.00e-02 > 2e-02"]
    assert g.failures(0.999, 0.99, 1.0, True, maxsim_rel_error=float("nan"))  # NaN never passes
    assert Gate.from_dict({**vars(g), "unknown": 1}) == g
    fp32 = GATES[Precision.FP32]
    assert fp32.failures(1.0, 1.0, 2e-4, unit_norm=True) and not fp32.failures(1.0, 1.0, 2e-4, unit_norm=False)


def test_parse_precisions() -> None:
    assert parse_precisions("fp32, int8,fp32") == (Precision.FP32, Precision.INT8)
    with pytest.raises(ValueError, match="unknown precision"):
        parse_precisions("fp8")
    with pytest.raises(ValueError, match="no precision"):
        parse_precisions(" , ")
