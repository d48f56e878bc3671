"""Bit-exact numpy port of torch's CPU uint8 antialiased bilinear resize.

The upstream LFM2-VL processor resizes with
``torchvision.transforms.v2.functional.resize(uint8, BILINEAR, antialias=True)``, which on x86
AVX2 and aarch64 runs ``aten::_upsample_bilinear2d_aa`` on the uint8 tensor directly. That kernel
is a separable triangle filter with per-axis fixed-point int16 weights whose precision depends on
the axis' largest weight. PIL's resize uses a fixed 22-bit precision and so differs by +-1 on a
few percent of values; hence this port. Section numbers refer to
``docs/resize.md``:

* per axis: ``scale = in/out``, ``support = max(scale, 1)``, window ``[xmin, xmin + xsize)``,
  float64 triangle weights normalised by a left-to-right sum (sections 2-3);
* ``prec`` = the largest precision <= 22 at which the axis' biggest weight stays below 2^15;
  ``W = trunc(0.5 + w * 2^prec)`` (section 4);
* horizontal pass first into a uint8 buffer, then vertical; an axis whose size does not change is
  skipped (section 5);
* ``out = clamp((2^(prec-1) + sum src*W) >> prec, 0, 255)`` (section 6).

Speed: the integer sums are evaluated as banded matrix products in floating point, which BLAS
runs near peak; the source is laid out [W, C*H] first so the horizontal pass reads whole rows.
That is exact, not approximate: every product and partial sum is a non-negative integer (times
a power of two), and we pick float32 only when the largest possible sum stays below 2^24 (else
float64, exact below 2^53), so no rounding can happen in any summation order. ``>> prec``
becomes a scaling by the exact power of two ``2^-prec`` (folded into the weights) and a floor.
The bands and the transposition are split over ``runtime.workers``' threads, with numpy's BLAS
held to one thread meanwhile; each band is rounded while it is still in cache. Every band
writes its own rows, so the result does not depend on the split.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np

from ..errors import InputError
from ..workers import parallel_map, single_threaded_blas, split_range

__all__ = ["axis_weights", "release_scratch", "resize_uint8", "resize_uint8_many", "resize_values_many"]

# Output rows per band: small enough that the band's input window stays narrow (few zero taps),
# large enough that each BLAS call has work to do. 16-64 measure the same on AVX2.
_BAND = 16
# Sources with more values than this are converted to float a band of rows at a time, to bound
# memory on huge scans (a 12000x12000 page would otherwise need 1.7 GB of float32 at once).
_CHUNK_ELEMS = 1 << 24
# Source rows per block when transposing to the horizontal pass' layout.
_TRANSPOSE_ROWS = 512
# Float buffers up to this many values (32 MB) are kept per thread and reused: a fresh 20 MB
# array costs thousands of page faults, which on a VM cost about as much as a matrix product.
# An A4 page at 150 dpi keeps ~70 MB; the most a thread can keep is 4 slots x 32 MB.
_SCRATCH_MAX = 1 << 23
_scratch_local = threading.local()
# Below this many values a copy is too short to be worth handing to another thread.
_PARALLEL_ELEMS = 1 << 18


def release_scratch() -> None:
    """Free this thread's reusable resize buffers (e.g. after a batch, on a small device)."""
    _scratch_local.bufs = {}


def _scratch(slot: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` from this thread's reusable buffer ``slot`` (uninitialised)."""
    n = math.prod(shape)
    if n > _SCRATCH_MAX:
        return np.empty(shape, dtype=np.float32)
    bufs = getattr(_scratch_local, "bufs", None)
    if bufs is None:
        bufs = _scratch_local.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < n:
        buf = bufs[slot] = np.empty(n, dtype=np.float32)
    return buf[:n].reshape(shape)


@lru_cache(maxsize=512)
def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer filter taps of one axis: ``(xmin[out], W[out, K] int64, prec)``.

    Taps past a row's window are 0.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k = math.ceil(support) * 2 + 1

    xmins = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, k), dtype=np.float64)
    wt_max = 0.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), k)
        row = []
        total = 0.0
        for j in range(xsize):
            x = ((j + xmin) - center + 0.5) * invscale
            w = 1.0 - abs(x) if abs(x) < 1.0 else 0.0
            row.append(w)
            total += w  # left to right, as torch does: a pairwise sum can differ in the last bit
        if total != 0.0:
            row = [w / total for w in row]  # true division, not a reciprocal multiply
            wt_max = max(wt_max, max(row))
        xmins[i] = xmin
        weights[i, : len(row)] = row

    prec = 22
    for p in range(22):
        if int(0.5 + wt_max * (1 << (p + 1))) >= (1 << 15):
            prec = p
            break
    w_int = np.trunc(0.5 + weights * float(1 << prec)).astype(np.int64)
    return xmins, w_int, prec


@lru_cache(maxsize=512)
def _band_plan(in_size: int, out_size: int) -> tuple[tuple, type, bool]:
    """Split the [out, in] weight matrix into dense row bands ``(o0, o1, lo, hi, W_band)``.

    Band weights are pre-scaled by ``2^-prec`` (an exponent shift, so still exact) so the matrix
    product yields ``sum * 2^-prec`` directly.
    """
    xmins, w_int, prec = axis_weights(in_size, out_size)
    k = w_int.shape[1]
    live = w_int != 0
    last = np.where(live.any(1), k - np.argmax(live[:, ::-1], axis=1), 1)
    ends = np.minimum(xmins + last, in_size)
    # Largest accumulator value: 255 * (row weight sum) + the rounding half.
    bound = 255 * int(w_int.sum(1).max()) + (1 << (prec - 1))
    dtype = np.float32 if bound < (1 << 24) else np.float64
    # The uint8 saturation can only bite if rounded weights sum past 2^prec by enough; skip the
    # clamp pass when no input can reach 256.
    needs_clamp = bound >= (256 << prec)
    scale = 2.0**-prec
    bands = []
    for o0 in range(0, out_size, _BAND):
        o1 = min(o0 + _BAND, out_size)
        lo = int(xmins[o0:o1].min())
        hi = max(int(ends[o0:o1].max()), lo + 1)
        band = np.zeros((o1 - o0, hi - lo), dtype=dtype)
        rows = np.repeat(np.arange(o1 - o0), k)
        cols = (xmins[o0:o1, None] + np.arange(k)[None, :] - lo).ravel()
        vals = w_int[o0:o1].ravel()
        keep = vals != 0
        band[rows[keep], cols[keep]] = vals[keep] * scale
        bands.append((o0, o1, lo, hi, band))
    return tuple(bands), dtype, needs_clamp


def _pass(x: np.ndarray, out_size: int, out: np.ndarray, axis: int) -> np.ndarray:
    """Resample ``x`` along ``axis`` into ``out`` [out_size, N], integral uint8 values as floats.

    ``axis=0``: ``x`` is [in, N] and each band reads contiguous rows (a plain NN product).
    ``axis=1``: ``x`` is [N, in]; the result is the transpose, so a second pass can read its own
    axis last and the two passes end in H, W, C order without a transposition copy.
    """
    in_size = x.shape[axis]
    bands, dtype, needs_clamp = _band_plan(in_size, out_size)
    x = x.astype(dtype, copy=False)
    acc = out if out.dtype == dtype else np.empty(out.shape, dtype=dtype)

    def run(group: tuple) -> None:
        for o0, o1, lo, hi, band in group:
            rows = acc[o0:o1]
            np.matmul(band, x[lo:hi] if axis == 0 else x[:, lo:hi].T, out=rows)
            # Round each band while it is still in cache (a separate pass over the whole
            # result reads it back from DRAM twice).
            # (sum + 2^(prec-1)) >> prec == floor(sum * 2^-prec + 0.5), exactly, at these magnitudes.
            rows += 0.5
            np.floor(rows, out=rows)
            if needs_clamp:
                np.minimum(rows, 255.0, out=rows)

    # Bands write disjoint rows: one contiguous run of bands per core.
    parallel_map(run, [bands[a:b] for a, b in split_range(len(bands))])
    if acc is not out:
        out[...] = acc
    return out


def _to_wch(image: np.ndarray) -> np.ndarray:
    """H x W x C uint8 -> float32 [W, C*H]: the horizontal pass then reads whole rows.

    Copied in blocks of rows so the strided reads stay in cache (a plain transposed copy is
    several times slower).
    """
    h, w, c = image.shape
    out = _scratch("source", (w, c, h))

    def rows(span: tuple[int, int]) -> None:
        for h0 in range(span[0], span[1], _TRANSPOSE_ROWS):
            h1 = min(span[1], h0 + _TRANSPOSE_ROWS)
            np.copyto(out[:, :, h0:h1], image[h0:h1].transpose(1, 2, 0))

    # A pure memory shuffle with no BLAS inside: it scales with threads, one span per core.
    parallel_map(rows, split_range(h, align=128) if h * w * c >= _PARALLEL_ELEMS else [(0, h)])
    return out.reshape(w, c * h)


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W x C uint8 image to ``(height, width)`` exactly as torchvision does on CPU.

    An unchanged size returns the input itself (torchvision does the same), and a pass whose axis
    keeps its size is skipped, not filtered.
    """
    return resize_uint8_many(image, [(height, width)])[0]


def resize_uint8_many(image: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Several resizes of one image (tiles and thumbnail), sharing its float conversion."""
    return [r if r.dtype == np.uint8 else r.astype(np.uint8) for r in resize_values_many(image, sizes)]


def resize_values_many(image: np.ndarray, sizes: list[tuple[int, int]], reuse_output: bool = False) -> list[np.ndarray]:
    """Like :func:`resize_uint8_many`, but a resized result comes back as float32 holding the
    exact uint8 values (0..255, integral). The normaliser reads those directly, which saves a
    cast to uint8 and back; an unchanged size still returns the uint8 input itself.

    ``reuse_output=True`` returns arrays in this thread's scratch buffers: they stay valid only
    until the next call in the same thread (the processor consumes them at once).
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise InputError(f"resize_uint8 expects an HxWxC uint8 array, got {image.dtype} {image.shape}")
    for height, width in sizes:
        if height < 1 or width < 1:
            raise InputError(f"target size must be positive, got {height}x{width}")
    with single_threaded_blas():
        return _resize_values_many(image, sizes, reuse_output)


def _resize_values_many(image: np.ndarray, sizes: list[tuple[int, int]], reuse_output: bool) -> list[np.ndarray]:
    in_h, in_w, c = image.shape
    chunked = in_h * in_w * c > _CHUNK_ELEMS
    source = None if chunked else _to_wch(image)
    outs = []
    for k, (height, width) in enumerate(sizes):
        if (in_h, in_w) == (height, width):
            outs.append(image)
            continue
        # z[w', c, h]: the horizontally resampled image, laid out so the vertical pass reads its
        # axis last.
        z = _scratch("z", (width, c, in_h))
        if not chunked:
            _horizontal(source, width, z.reshape(width, c * in_h))
        else:
            # Huge scans: convert and filter a band of rows at a time to bound the float copy.
            rows = max(1, _CHUNK_ELEMS // (in_w * c))
            for h0 in range(0, in_h, rows):
                h1 = min(in_h, h0 + rows)
                part = np.empty((width, c * (h1 - h0)), dtype=np.float32)
                _horizontal(_to_wch(image[h0:h1]), width, part)
                z[:, :, h0:h1] = part.reshape(width, c, h1 - h0)
        z2 = z.reshape(width * c, in_h)
        if height != in_h:
            shape = (height, width * c)
            target = _scratch(f"out{k}", shape) if reuse_output else np.empty(shape, dtype=np.float32)
            out = _pass(z2, height, target, axis=1)
        else:
            out = np.ascontiguousarray(z2.T)
        outs.append(out.reshape(height, width, c))
    return outs


def _horizontal(source: np.ndarray, width: int, out: np.ndarray) -> None:
    """[W, C*H] -> out [W', C*H]; a copy when the width does not change."""
    if width != source.shape[0]:
        _pass(source, width, out, axis=0)
    else:
        out[...] = source
