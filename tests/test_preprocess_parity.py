"""Our numpy processor against transformers' Lfm2VlProcessor and upstream ColLFM2Processor: 0 differing values.

Resize backend on the transformers side: ``Lfm2VlImageProcessor`` is a ``TorchvisionBackend``;
``torchvision.transforms.v2.functional.resize(uint8, BILINEAR, antialias=True)`` hands the uint8
tensor to ``torch.nn.functional.interpolate`` (``aten::_upsample_bilinear2d_aa``) when torch's
CPU capability is AVX2/AVX512 or the machine is aarch64; ``test_resize_backend`` pins that.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import ColLFM2Processor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision")

PROMPT = "<|im_start|>user\n<image>Describe the image.<|im_end|>"
KEYS = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "spatial_shapes")


def _sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """(height, width) from 16 to 4000 px, log-uniform, portrait and landscape, tiled and not."""
    rng = np.random.default_rng(seed)
    sizes = [(16, 16), (4000, 4000), (4000, 16), (16, 4000), (512, 512), (1754, 1240), (1240, 1754),
             (842, 595), (792, 612), (480, 640), (100, 100), (1024, 1024), (700, 2100), (2100, 700)]  # fmt: skip
    while len(sizes) < n:
        h, w = (round(math.exp(x)) for x in rng.uniform(math.log(16), math.log(4000), 2))
        if h * w <= 6_000_000:  # keep the suite quick; the 4000x4000 case above covers the top end
            sizes.append((h, w))
    return sizes


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if seed % 3 == 0:  # page-like: smooth background with text-like strokes
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(200 + 40 * np.sin(yy / 37.0)), (210 + 30 * np.cos(xx / 23.0)), np.full((h, w), 230.0)], -1)
        arr[(yy // 7 + xx // 11) % 9 == 0] = 20
        return Image.fromarray(arr.astype(np.uint8))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def hf_processors(tiny_ckpt: Path, tiny_ckpt_nothumb: Path):
    from transformers import AutoProcessor

    return {True: AutoProcessor.from_pretrained(tiny_ckpt), False: AutoProcessor.from_pretrained(tiny_ckpt_nothumb)}


@pytest.fixture(scope="module")
def ours(tiny_ckpt: Path, tiny_ckpt_nothumb: Path):
    return {
        True: ColLFM2Processor.from_pretrained(tiny_ckpt, decode="upstream"),
        False: ColLFM2Processor.from_pretrained(tiny_ckpt_nothumb, decode="upstream"),
    }


def test_resize_backend(hf_processors) -> None:
    from transformers.image_processing_backends import TorchvisionBackend

    ip = hf_processors[True].image_processor
    assert isinstance(ip, TorchvisionBackend), type(ip).__mro__
    assert ip.use_thumbnail is True and hf_processors[False].image_processor.use_thumbnail is False
    import platform

    cap = torch.backends.cpu.get_cpu_capability()
    assert cap in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64"), (
        f"torchvision would take its float resize path on capability {cap}; parity is defined for the uint8 kernel"
    )


SIZES = _sizes(210, seed=7)


@pytest.mark.parametrize("idx", range(len(SIZES)))
def test_bit_exact_against_transformers(idx: int, hf_processors, ours) -> None:
    h, w = SIZES[idx]
    thumb = idx % 2 == 0
    img = _image(h, w, seed=idx)
    ref = hf_processors[thumb](text=PROMPT, images=img, return_tensors="pt")
    got = ours[thumb].process_images([img])
    for key in KEYS:
        r = ref[key].numpy()
        assert got[key].dtype == r.dtype, (key, got[key].dtype, r.dtype)
        assert got[key].shape == r.shape, (key, got[key].shape, r.shape)
        diff = int(np.count_nonzero(got[key] != r))
        assert diff == 0, f"{key}: {diff} differing values for {w}x{h} (thumbnail={thumb})"


def test_batch_against_upstream_collfm2_processor(tiny_ckpt: Path, ours) -> None:
    """The seed's own ColLFM2Processor (per-image calls, right-padded collation) on a mixed batch."""
    up_mod = pytest.importorskip("sauerkrautlm_colpali.models.lfm2.collfm2.processing_collfm2")
    upstream = up_mod.ColLFM2Processor.from_pretrained(str(tiny_ckpt))
    imgs = [_image(h, w, seed=i) for i, (h, w) in enumerate([(512, 512), (1754, 1240), (100, 300), (300, 2500)])]
    ref = upstream.process_images(imgs)
    got = ours[True].process_images(imgs)
    for key in KEYS:
        np.testing.assert_array_equal(got[key], ref[key].numpy(), err_msg=key)
        assert got[key].dtype == ref[key].numpy().dtype

    queries = ["hello world", "total revenue of the year", "x"]
    ref_q = upstream.process_queries(queries)
    got_q = ours[True].process_queries(queries)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(got_q[key], ref_q[key].numpy(), err_msg=key)


def test_tile_labels_follow_transformers_5x_and_457_option(tiny_ckpt: Path, hf_processors) -> None:
    """A4 portrait is a 3-row x 2-col grid: 5.x labels rows 1..3; the 4.57 option swaps them."""
    img = _image(1754, 1240, seed=1)
    ref_ids = hf_processors[True](text=PROMPT, images=img, return_tensors="np")["input_ids"][0]
    p5 = ColLFM2Processor.from_pretrained(tiny_ckpt)
    p457 = ColLFM2Processor.from_pretrained(tiny_ckpt, tile_labels="4.57")
    ids5 = p5.process_images([img])["input_ids"][0]
    ids457 = p457.process_images([img])["input_ids"][0]
    np.testing.assert_array_equal(ids5, ref_ids)
    tok = p5.tokenizer.tokenizer
    labels5 = [tok.id_to_token(int(i)) for i in ids5 if "img_row" in (tok.id_to_token(int(i)) or "")]
    labels457 = [tok.id_to_token(int(i)) for i in ids457 if "img_row" in (tok.id_to_token(int(i)) or "")]
    assert labels5 == [f"<|img_row_{r}_col_{c}|>" for r in (1, 2, 3) for c in (1, 2)]
    assert labels457 == [f"<|img_row_{r}_col_{c}|>" for r in (1, 2) for c in (1, 2, 3)]
    assert len(ids5) == len(ids457)  # same pixels, same token count: only labels differ


def test_thumbnail_override_matches_transformers_kwarg(tiny_ckpt: Path, hf_processors) -> None:
    img = _image(1240, 1754, seed=4)
    ref = hf_processors[True](text=PROMPT, images=img, use_thumbnail=False, return_tensors="np")
    got = ColLFM2Processor.from_pretrained(tiny_ckpt, decode="upstream", use_thumbnail=False).process_images([img])
    for key in KEYS:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_custom_preprocessor_config_is_honoured(tmp_path: Path, tiny_ckpt: Path) -> None:
    """Token limits, tiling limits and tolerance come from preprocessor_config.json, as upstream."""
    import json
    import shutil

    from transformers import AutoProcessor

    ck = tmp_path / "custom"
    shutil.copytree(tiny_ckpt, ck)
    cfg = json.loads((ck / "preprocessor_config.json").read_text())
    cfg.update(min_image_tokens=32, max_image_tokens=128, max_tiles=4, max_pixels_tolerance=1.5)
    (ck / "preprocessor_config.json").write_text(json.dumps(cfg))
    hf = AutoProcessor.from_pretrained(ck)
    ours = ColLFM2Processor.from_pretrained(ck, decode="upstream")
    assert ours.config.max_image_tokens == 128 and ours.config.max_num_patches == 1024
    for i, (h, w) in enumerate([(90, 60), (512, 512), (600, 900), (1754, 1240), (3000, 500)]):
        img = _image(h, w, seed=i)
        ref = hf(text=PROMPT, images=img, return_tensors="np")
        got = ours.process_images([img])
        for key in KEYS:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key} {w}x{h}")
