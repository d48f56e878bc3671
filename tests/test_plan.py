"""Tiling plans and token counts against the numbers in docs/reference.md §3."""

from __future__ import annotations

import pytest

from runtime.errors import ImageError
from runtime.preprocess.config import PreprocessConfig
from runtime.preprocess.image import plan_image, position_weights, smart_resize, unshuffle_index

CFG = PreprocessConfig()


@pytest.mark.parametrize(
    "w,h,tokens,tiled",
    [
        (512, 512, 256, False),
        (640, 480, 234, False),
        (595, 842, 247, False),  # A4 at 72 dpi
        (612, 792, 252, False),  # Letter at 72 dpi
        (100, 100, 64, False),
        (1240, 1754, 1783, True),  # A4 at 150 dpi: 2 cols x 3 rows + thumbnail
    ],
)
def test_token_counts(w: int, h: int, tokens: int, tiled: bool) -> None:
    plan = plan_image(h, w, CFG)
    assert plan.num_image_tokens == tokens
    assert plan.tiled is tiled


def test_a4_grid_and_thumbnail_switch() -> None:
    plan = plan_image(1754, 1240, CFG)
    assert (plan.grid_rows, plan.grid_cols) == (3, 2)
    assert plan.thumbnail and len(plan.unit_sizes) == 7
    no_thumb = plan_image(1754, 1240, PreprocessConfig(use_thumbnail=False))
    assert no_thumb.num_image_tokens == 1536 and len(no_thumb.unit_sizes) == 6


def test_smart_resize_examples() -> None:
    assert smart_resize(480, 640, CFG) == (416, 576)
    assert smart_resize(842, 595, CFG) == (608, 416)
    assert smart_resize(100, 100, CFG) == (256, 256)
    assert smart_resize(1, 1, CFG) == (256, 256)


def test_splitting_disabled_gives_one_unit() -> None:
    plan = plan_image(1754, 1240, PreprocessConfig(do_image_splitting=False))
    assert not plan.tiled and len(plan.unit_sizes) == 1
    assert plan.num_image_tokens <= 256


def test_extreme_strip_is_a_clear_error() -> None:
    with pytest.raises(ImageError, match="too extreme"):
        plan_image(1, 20000, CFG)


def test_unshuffle_index_layout() -> None:
    idx = unshuffle_index(4, 6)  # 2 x 3 tokens
    assert idx.shape == (256, 4)
    # token (0, 1) gathers patches (0,2), (0,3), (1,2), (1,3) of a 6-wide grid
    assert idx[1].tolist() == [2, 3, 8, 9]
    assert idx[3].tolist() == [12, 13, 18, 19]  # token (1, 0)
    assert (idx[6:] == 0).all()


def test_position_weights_rows_sum_to_one() -> None:
    w = position_weights(26, 36)
    assert w.shape == (1024, 256)
    assert abs(w[: 26 * 36].sum(axis=1) - 1).max() < 1e-6
    assert (w[26 * 36 :] == w[0]).all()
