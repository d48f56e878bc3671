"""Every bad input gets ImageError/QueryError with one line, or is handled correctly."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import ColLFM2Processor, ImageError, InputError, QueryError, UserError
from runtime.preprocess.image import decode_image


@pytest.fixture(scope="module")
def proc(tiny_ckpt: Path) -> ColLFM2Processor:
    return ColLFM2Processor.from_pretrained(tiny_ckpt)


def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    chunk2 = b"IDAT" + idat
    data += struct.pack(">I", len(idat)) + chunk2 + struct.pack(">I", zlib.crc32(chunk2))
    return b"\x89PNG\r\n\x1a\n" + data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda d: _write(d / "empty.png", b""), "empty file"),
        (lambda d: _write(d / "text.png", b"this is not an image\n" * 10), "not a recognised image"),
        (lambda d: _write(d / "bomb.png", _png_header_only(60000, 60000)), "too large|refused"),
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: d, "directory"),
        (lambda d: _truncated_jpeg(d / "trunc.jpg"), "cannot decode|truncated"),
    ],
    ids=["zero-byte", "text-as-png", "bomb-60000x60000", "missing", "directory", "truncated-jpeg"],
)
def test_bad_files_raise_one_line_image_error(tmp_path: Path, proc: ColLFM2Processor, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageError, match=match) as info:
        proc.process_images([path])
    _one_line(info.value)
    assert isinstance(info.value, UserError)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_empty_bytes(proc: ColLFM2Processor) -> None:
    with pytest.raises(ImageError, match="empty"):
        proc.process_images([b""])


def test_sixteen_bit_gray_scan(tmp_path: Path, tiny_ckpt: Path) -> None:
    """Upstream turns a 16-bit scan all white; corrected mode scales it to 8 bits."""
    ramp = (np.linspace(0, 65535, 200 * 300).reshape(200, 300)).astype(np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    up = decode_image(path, "upstream")
    fixed = decode_image(path, "corrected")
    assert (up == 255).mean() > 0.99  # the upstream behaviour we document, not one we want
    expected = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(fixed[:, :, 0], expected)
    out = ColLFM2Processor.from_pretrained(tiny_ckpt).process_images([path])
    assert np.isfinite(out["pixel_values"]).all()


def test_cmyk(tmp_path: Path, proc: ColLFM2Processor) -> None:
    path = _save(Image.new("CMYK", (300, 200), (0, 0, 0, 255)), tmp_path / "cmyk.jpg")
    arr = decode_image(path)
    assert arr.shape == (200, 300, 3) and arr.max() < 30  # black stays black
    out = proc.process_images([path])
    real = out["pixel_values"][0][out["pixel_attention_mask"][0] > 0]
    lo = (0 / 255 - np.asarray(proc.config.image_mean)) / np.asarray(proc.config.image_std)
    assert real.size and np.abs(real.reshape(-1, 3) - lo).max() < 30 / 255 / min(proc.config.image_std)


def test_palette_with_transparency_composites_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 32, 64))
    img.info["transparency"] = 0  # palette index 0 (black) is transparent
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    arr = decode_image(path, "corrected")
    assert (arr[:, 40:] == 255).all()  # the transparent half is white, not black
    assert (arr[:, :20] == [255, 0, 0]).all()
    assert (decode_image(path, "upstream")[:, 40:] == 0).all()


def test_rgba_composites_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((50, 80, 4), np.uint8)
    rgba[:, :40] = [0, 0, 255, 255]
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    arr = decode_image(path)
    assert (arr[:, 40:] == 255).all() and (arr[:, :40] == [0, 0, 255]).all()


def test_exif_orientation_is_applied_in_corrected_mode(tmp_path: Path) -> None:
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    assert decode_image(path, "upstream").shape == (100, 200, 3)
    assert decode_image(path, "corrected").shape == (200, 100, 3)


@pytest.mark.parametrize("size", [(1, 1), (3, 1), (16, 16)])
def test_tiny_images_are_processed(proc: ColLFM2Processor, size: tuple[int, int]) -> None:
    out = proc.process_images([Image.new("RGB", size, "gray")])
    (ph, pw), n = out["spatial_shapes"][0], out["pixel_attention_mask"][0].sum()
    assert ph * pw == n and (ph // 2) * (pw // 2) >= 64  # upscaled to at least min_image_tokens
    assert np.isfinite(out["pixel_values"]).all()


def test_long_strip_is_refused_cleanly(proc: ColLFM2Processor) -> None:
    with pytest.raises(ImageError, match="too extreme") as info:
        proc.process_images([Image.new("RGB", (20000, 1), "white")])
    _one_line(info.value)


def test_failed_image_names_itself_in_a_batch(tmp_path: Path, proc: ColLFM2Processor) -> None:
    good = _save(Image.new("RGB", (64, 64)), tmp_path / "ok.png")
    bad = _write(tmp_path / "bad.png", b"nope")
    with pytest.raises(ImageError, match=r"bad\.png"):
        proc.process_images([good, bad])


def test_array_inputs(proc: ColLFM2Processor) -> None:
    grey = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    out = proc.process_images([np.repeat(grey[:, :, None], 3, axis=2), grey])
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        np.testing.assert_array_equal(out[key][0], out[key][1], err_msg=key)  # HxW is HxWx3 grey
    assert out["pixel_attention_mask"][0].sum() > 0
    with pytest.raises(ImageError):
        proc.process_images([np.zeros((40, 50, 3), np.float32)])
    with pytest.raises(ImageError):
        proc.process_images([np.zeros((0, 50, 3), np.uint8)])


@pytest.mark.parametrize("query", ["", "   ", "\n\t "])
def test_empty_queries(proc: ColLFM2Processor, query: str) -> None:
    with pytest.raises(QueryError, match="empty") as info:
        proc.process_queries([query])
    _one_line(info.value)


def test_very_long_query(proc: ColLFM2Processor) -> None:
    with pytest.raises(QueryError, match="token limit"):
        proc.process_queries(["word " * 5000])
    assert proc.process_queries(["word " * 300])["input_ids"].shape[1] > 300


def test_empty_batches(proc: ColLFM2Processor) -> None:
    with pytest.raises(InputError):
        proc.process_images([])
    with pytest.raises(InputError):
        proc.process_queries([])


def test_rgb_with_colour_key_transparency(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = [10, 200, 30]
    path = tmp_path / "key.png"
    Image.fromarray(arr).save(path, transparency=(0, 0, 0))  # black is transparent
    assert (decode_image(path, "corrected")[:, 20:] == 255).all()
    assert (decode_image(path, "upstream")[:, 20:] == 0).all()


def test_plan_errors_name_the_file(tmp_path: Path, proc: ColLFM2Processor) -> None:
    path = _save(Image.new("RGB", (20000, 1), "white"), tmp_path / "strip.png")
    with pytest.raises(ImageError, match=r"strip\.png: aspect ratio"):
        proc.process_images([path])


def test_unknown_preprocessor_override(tiny_ckpt: Path) -> None:
    with pytest.raises(InputError, match="use_thumbnale"):
        ColLFM2Processor.from_pretrained(tiny_ckpt, use_thumbnale=False)
