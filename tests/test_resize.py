"""The numpy resize against torch's uint8 antialiased bilinear kernel, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import InputError
from runtime.preprocess.resize import axis_weights, resize_uint8

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _cases(seed: int, n: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        kind = rng.integers(4)
        h, w = (int(x) for x in rng.integers(1, 1400, 2))
        if kind == 0:  # downscale
            oh, ow = max(1, h // int(rng.integers(1, 9))), max(1, w // int(rng.integers(1, 9)))
        elif kind == 1:  # upscale
            oh, ow = h * int(rng.integers(1, 4)) + int(rng.integers(0, 7)), w + int(rng.integers(0, 300))
        elif kind == 2:  # one axis unchanged
            oh, ow = h, int(rng.integers(1, 1400))
        else:
            oh, ow = (int(x) for x in rng.integers(1, 1400, 2))
        if oh * ow > 1:  # torch's AVX2 path asserts on 1x1 outputs (docs/resize.md §7)
            cases.append(((h, w), (oh, ow)))
    return cases


EDGE_CASES = [
    ((1754, 1240), (1536, 1024)),  # A4 at 150 dpi -> 2x3 tiles
    ((1240, 1754), (1024, 1536)),
    ((20000, 1), (512, 32)),
    ((1, 2000), (32, 512)),
    ((16, 16), (4000, 16)),
    ((3, 4000), (700, 10)),
    ((17, 4000), (17, 1)),
    ((4000, 4000), (16, 16)),  # prec 22, float64 path
    ((512, 512), (512, 512)),  # identity returns the input
]


@pytest.mark.parametrize("src,dst", EDGE_CASES + _cases(seed=1, n=120))
def test_resize_bit_exact(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(src[0] * 7919 + dst[1])
    img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    if rng.random() < 0.5:  # smooth content exercises other rounding than noise
        yy, xx = np.mgrid[0 : src[0], 0 : src[1]]
        img = ((yy * 3 + xx * 5) % 256).astype(np.uint8)[:, :, None].repeat(3, axis=2)
    np.testing.assert_array_equal(resize_uint8(img, *dst), _torch_resize(img, *dst))


def test_resize_matches_torchvision_functional() -> None:
    """The exact call upstream makes, where torchvision can be imported."""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (700, 500, 3), dtype=np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    ref = tvf.resize(t, [512, 384], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
    np.testing.assert_array_equal(resize_uint8(img, 512, 384), ref.permute(1, 2, 0).numpy())


def test_precision_rule_matches_documented_values() -> None:
    # docs/resize.md §4: prec 15 at 1240->1024, 14 for an upscale, 20 for 20000->512, 22 for 4000->16.
    assert axis_weights(1240, 1024)[2] == 15
    assert axis_weights(100, 300)[2] == 14
    assert axis_weights(20000, 512)[2] == 20
    assert axis_weights(4000, 16)[2] == 22


def test_resize_rejects_bad_arrays() -> None:
    with pytest.raises(InputError):
        resize_uint8(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(InputError):
        resize_uint8(np.zeros((4, 4, 3), np.uint8), 0, 2)


def test_reused_buffers_do_not_leak_between_calls() -> None:
    """Public results are fresh arrays; scratch reuse must not alias them."""
    from runtime.preprocess.resize import release_scratch, resize_values_many

    rng = np.random.default_rng(9)
    a_img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    b_img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    a = resize_uint8(a_img, 150, 100)
    a_copy = a.copy()
    resize_uint8(b_img, 150, 100)
    np.testing.assert_array_equal(a, a_copy)
    kept = resize_values_many(a_img, [(150, 100)])[0]
    resize_values_many(b_img, [(150, 100)], reuse_output=True)
    np.testing.assert_array_equal(kept, a_copy)  # not a scratch view
    release_scratch()
    np.testing.assert_array_equal(resize_uint8(a_img, 150, 100), a_copy)
