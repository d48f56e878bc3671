"""``ColLFM2``: the exported graphs, each run by a ``Runner`` of the chosen engine
(``runtime.encoder.runner.ENGINES``), plus the numpy glue between them.

Page path (arrays from ``ColLFM2Processor.process_images``)::

    pixel_values [U, 1024, 768], pixel_attention_mask [U, 1024], spatial_shapes [U, 2]
      + pos_weights [U, 1024, 256], unshuffle_index [U, 256, 4]     (numpy, per tile shape)
      -> vision graph -> image_tokens [U, 256, D]; tile u keeps its first (ph/2)(pw/2) rows
    input_ids [B, L] -> embedding table [V, D] -> inputs_embeds [B, L, D]
      with the image tokens written, in order, where input_ids == <image>   (upstream's masked_scatter)
    inputs_embeds + attention_mask -> text graph -> embeddings [B, L, 128]

Queries skip the first two steps. Output is float32 with padded rows exactly 0, the shape the
reference returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.contract import TEXT, VISION, check_manifest_contract
from ..bundle.manifest import Bundle, open_bundle
from ..errors import InputError, ModelFilesError
from ..preprocess.image import position_weights, unshuffle_index
from ..preprocess.processor import real_rows
from .runner import check_recorded, engine

__all__ = ["ColLFM2", "default_precision", "merge_image_tokens"]


def default_precision(
    backend: str, available: Sequence[str], machine: str | None = None, int8_methods: Sequence[str] = ()
) -> str:
    """The precision a backend should run when none is asked for.

    GPUs run fp16. On CPUs (measured with the full model, docs/cpu-classes.md): dynamic int8 is
    1.6x fp32 on an AVX2-only x86 and 1.9x on AVX-512 VNNI, so x86 runs int8 when every int8
    graph of the bundle got ``dynamic-int8``; the weight-only fallback (MatMulNBits) is slower
    than fp32 on x86 (0.86x a page, 0.29x a query on AVX2), so with it x86 stays on fp32. ARM CPUs
    run int8 either way: fp16 there makes ORT insert casts (~4x slower than fp32 on a Pi 5,
    onnxruntime issue 25824), and int8 reads a quarter of the weights. ``int8_methods``: the
    methods the gate chose for the int8 graphs (``Bundle.methods("int8")``).
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if engine(backend).device == "cpu":
        arm = machine in ("aarch64", "arm64")
        fast_int8 = bool(int8_methods) and all(m == "dynamic-int8" for m in int8_methods)
        order = ["int8", "fp32"] if arm or fast_int8 else ["fp32", "int8"]
    else:
        order = ["fp16", "fp32"]
    for p in order:
        if p in available:
            return p
    return available[0]


# Tiles per vision call. On a CPU one 1,024-patch tile already fills the GEMMs, so batching tiles
# buys no speed and multiplies the activation peak (benchmarks/bench_rss.py measures it); GPUs
# need the batch to fill the device.
DEFAULT_VISION_BATCH = 4
CPU_VISION_BATCH = 1


def default_vision_batch(backend: str) -> int:
    """Tiles per vision call for ``backend``: 1 on CPU engines, ``DEFAULT_VISION_BATCH`` on GPUs."""
    return CPU_VISION_BATCH if engine(backend).device == "cpu" else DEFAULT_VISION_BATCH


@lru_cache(maxsize=64)
def _tile_arrays(ph: int, pw: int, grid: int, max_patches: int, factor: int, max_tokens: int) -> tuple:
    return position_weights(ph, pw, grid, max_patches), unshuffle_index(ph, pw, factor, max_tokens)


def merge_image_tokens(
    embeds: np.ndarray, input_ids: np.ndarray, tokens: np.ndarray, image_token_id: int
) -> np.ndarray:
    """Write ``tokens`` [n, D] into ``embeds`` [B, L, D] at the ``<image>`` positions, row-major.

    The same order as upstream's ``masked_scatter``. A count mismatch means the ids and pixels
    came from different images, which would silently shift every page after it: refuse.
    """
    where = input_ids == image_token_id
    count = int(where.sum())
    if count != tokens.shape[0]:
        raise InputError(
            f"the batch has {count} <image> tokens but its pixels give {tokens.shape[0]} image tokens; "
            "input_ids and pixel_values must come from the same process_images call"
        )
    embeds[where] = tokens
    return embeds


class ColLFM2:
    """Torch-free ColLFM2 encoder over a bundle written by ``python -m export --target onnx``."""

    def __init__(
        self,
        bundle: Bundle,
        precision: str | None = None,
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
        vision_batch: int | None = None,
        output_dtype: str = "float32",
        backend: str = "ort-cpu",
    ) -> None:
        chosen = engine(backend)
        self.backend = backend
        if output_dtype not in ("float32", "float16"):
            raise InputError(f"output_dtype must be 'float32' or 'float16', got {output_dtype!r}")
        self.output_dtype = np.dtype(output_dtype)
        self.bundle = bundle
        if precision is None and not chosen.own_precision:
            precision = default_precision(backend, bundle.precisions, int8_methods=bundle.methods("int8"))
        loaded = chosen.load(bundle, precision, threads, providers)
        self.runners = loaded.runners  # graph -> Runner: run(feeds) -> [outputs]
        self.precision = loaded.precision
        self.engines = loaded.engines  # the engine set's engines.json (trt)
        entry = loaded.entry
        self.gate = entry.get("gate")  # what selftest judges these graphs by
        m = bundle.model
        self.image_token_id = int(m["image_token_id"])
        self.hidden_size = int(m["hidden_size"])
        self.dim = int(m["dim"])
        self._grid = int(m["position_grid"])
        self._max_patches = int(m["max_num_patches"])
        self._factor = int(m["downsample_factor"])
        self.downsample_factor = self._factor
        self._max_tokens = int(m["tokens_per_tile"])
        # Bundles whose vision graph takes a dynamic patch count list the buckets to run it at.
        self.patch_buckets = sorted(int(b) for b in m.get("patch_buckets", [self._max_patches]))
        # Input names come from the bundle's graph contract (checked against runtime.bundle.contract).
        self._input_names = check_manifest_contract(str(bundle.path), bundle.manifest.get("contract"))
        self.vision_batch = max(1, int(vision_batch or default_vision_batch(backend)))
        # ORT's dynamic int8 quantises each activation tensor with one scale for the whole call, so an
        # item's rows would depend on what shares its batch (and its padding): such graphs see one
        # item at a time, unpadded, and a page or query gets the same rows however it is batched.
        graphs = entry.get("graphs") if isinstance(entry, dict) else None
        self.one_at_a_time = frozenset(
            g for g, spec in (graphs or {}).items() if isinstance(spec, dict) and spec.get("method") == "dynamic-int8"
        )
        if "vision" in self.one_at_a_time:
            self.vision_batch = 1

        emb = entry["embeddings"]
        try:
            # mmap: the fp32 table is 268 MB and a page touches a few hundred of its rows.
            self.embed_table = np.load(bundle.file(emb["file"]), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelFilesError(f"{bundle.file(emb['file'])}: unreadable embedding table ({exc})") from exc
        if list(self.embed_table.shape) != list(emb["shape"]):
            raise ModelFilesError(
                f"{bundle.file(emb['file'])}: shape {self.embed_table.shape}, manifest {emb['shape']}"
            )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        precision: str | None = None,
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
        verify: bool = True,
        vision_batch: int | None = None,
        output_dtype: str = "float32",
        backend: str = "ort-cpu",
    ) -> ColLFM2:
        """Open a bundle (checking its manifest and the hashes of ``precision``'s files).

        ``vision_batch``: tiles per vision call (default: ``default_vision_batch(backend)``).
        ``output_dtype="float16"`` halves what an index stores; scoring accumulates in fp32 anyway.
        ``backend``: ``ort-cpu`` (default), ``ort-cuda``, ``ort-trt`` (ONNX Runtime providers) or ``trt``
        (native engines from ``python -m export --target trt``). Without ``precision``, each backend
        picks its own (``default_precision``); with ``trt``, ``precision`` may name an engine set
        (``"trt/orin-nano-fp16"``) when the bundle holds several.
        """
        check_recorded(backend, precision)
        bundle = open_bundle(Path(path), verify=False)  # the precision may depend on what it holds
        if engine(backend).own_precision:  # engines are checked by their own sha256 as they load
            if verify:
                bundle.verify_files(bundle.processor_files())
            return cls(bundle, precision, providers, threads, vision_batch, output_dtype, backend)
        precision = precision or default_precision(backend, bundle.precisions, int8_methods=bundle.methods("int8"))
        bundle.precision(precision)  # a clear error for a precision the bundle lacks
        if verify:
            bundle.verify(precision)
        return cls(bundle, precision, providers, threads, vision_batch, output_dtype, backend)

    # -- stages ---------------------------------------------------------------------------

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        """[B, L] ids -> [B, L, D] float32 rows of the embedding table."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.embed_table.shape[0]):
            raise InputError(f"token id out of range 0..{self.embed_table.shape[0] - 1}")
        return np.asarray(self.embed_table[ids], dtype=np.float32)

    def image_tokens(
        self, pixel_values: np.ndarray, pixel_attention_mask: np.ndarray, spatial_shapes: np.ndarray
    ) -> np.ndarray:
        """Vision graph over all tiles, in batches -> the real image tokens [n, D], tile order."""
        shapes = np.asarray(spatial_shapes, dtype=np.int64)
        n_units = shapes.shape[0]
        if pixel_values.shape[0] != n_units or pixel_attention_mask.shape[0] != n_units:
            raise InputError("pixel_values, pixel_attention_mask and spatial_shapes disagree on the number of tiles")
        runner = self.runners["vision"]
        f = self._factor
        # Run each tile at the smallest patch-count bucket that holds it: padded patches are masked
        # keys, so real rows are unchanged, and a 256-patch tile costs a quarter of a 1,024 one.
        buckets = [self.bucket_for(int(ph) * int(pw)) for ph, pw in shapes]
        tokens_of: dict[int, np.ndarray] = {}
        for bucket in sorted(set(buckets)):
            units = [u for u in range(n_units) if buckets[u] == bucket]
            for k0 in range(0, len(units), self.vision_batch):
                chunk = units[k0 : k0 + self.vision_batch]
                feeds = VISION.feeds(
                    self._input_names["vision"],
                    pixel_values[chunk],
                    pixel_attention_mask[chunk],
                    [(int(shapes[u][0]), int(shapes[u][1])) for u in chunk],
                    bucket,
                    self._cached_tile_arrays,
                    numbers=self.bundle.model,
                )
                out = runner.run(feeds)[0]  # [b, bucket / f^2, D]
                for k, u in enumerate(chunk):
                    ph, pw = int(shapes[u][0]), int(shapes[u][1])
                    tokens_of[u] = out[k, : (ph // f) * (pw // f)]
        out_list = [tokens_of[u] for u in range(n_units)]
        return np.concatenate(out_list, axis=0) if out_list else np.zeros((0, self.hidden_size), np.float32)

    def _cached_tile_arrays(self, ph: int, pw: int, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        f = self._factor
        return _tile_arrays(ph, pw, self._grid, bucket, f, bucket // (f * f))

    def bucket_for(self, patches: int) -> int:
        """The smallest patch-count bucket that holds ``patches`` (the graph's maximum if none)."""
        for b in self.patch_buckets:
            if patches <= b:
                return b
        return self.patch_buckets[-1]

    def text(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Text graph: [B, S, D] + [B, S] -> [B, S, 128] float32, padded rows 0."""
        if "text" not in self.one_at_a_time:
            return self._text(inputs_embeds, attention_mask)
        mask = np.asarray(attention_mask)
        out = np.zeros((*mask.shape, self.dim), np.float32)
        for i in range(mask.shape[0]):
            real = np.flatnonzero(mask[i])
            if real.size:
                out[i, real] = self._text(inputs_embeds[i : i + 1, real], mask[i : i + 1, real])[0]
        return out

    def _text(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = TEXT.feeds(self._input_names["text"], inputs_embeds, attention_mask, numbers=self.bundle.model)
        out = np.asarray(self.runners["text"].run(feeds)[0], dtype=np.float32)
        if out.shape[-1] != self.dim:  # before a store records vectors of the wrong size
            raise ModelFilesError(
                f"{self.bundle.path}: the text graph gives {out.shape[-1]}-d vectors, the manifest says {self.dim}"
            )
        return out

    # -- public ---------------------------------------------------------------------------

    @property
    def processor(self) -> Any:
        """The bundle's ``ColLFM2Processor`` (loaded on first use, once)."""
        if getattr(self, "_processor", None) is None:
            from ..preprocess.processor import ColLFM2Processor

            self._processor = ColLFM2Processor.from_pretrained(self.bundle.path)
        return self._processor

    def embed_images(self, images: Iterable[Any], batch_size: int = 4) -> Iterator[np.ndarray]:
        """Each image's (path, bytes, PIL image or HxWx3 array) real rows [n, dim], in order.

        A stream, like fastembed's ``embed``: images are read and preprocessed in a background
        thread while the model runs the previous batch of ``batch_size`` pages (fewer when they
        hold more than ``ingest.DEFAULT_BATCH_TILES`` tiles), so memory stays flat however many
        come. A bad image raises ``InputError`` naming it."""
        from ..ingest.sources import Failed, image_sources
        from ..ingest.stream import encode_stream

        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        for item in encode_stream(self, self.processor, image_sources(images), batch_pages=batch_size):
            if isinstance(item, Failed):
                raise InputError(item.message)
            yield item.embeddings.astype(self.output_dtype, copy=False)

    def embed_queries(self, queries: Iterable[str], batch_size: int = 16) -> Iterator[np.ndarray]:
        """Each query's real rows [n, dim] (BOS included), in order, ``batch_size`` per model call."""
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(queries, str):
            queries = [queries]
        batch: list[str] = []
        for q in queries:
            batch.append(q)
            if len(batch) == batch_size:
                yield from self._embed_query_batch(batch)
                batch = []
        if batch:
            yield from self._embed_query_batch(batch)

    def _embed_query_batch(self, batch: list[str]) -> Iterator[np.ndarray]:
        yield from self.encode_rows(self.processor.process_queries(batch))

    def encode_rows(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A ``process_images`` or ``process_queries`` batch -> each item's real rows [n_i, 128]."""
        return real_rows(self.encode(batch), batch["attention_mask"])

    def __call__(self, **batch: np.ndarray) -> np.ndarray:
        """A ``process_images`` or ``process_queries`` batch -> embeddings [B, L, 128]."""
        return self.encode(batch)

    def encode(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        try:
            input_ids = np.asarray(batch["input_ids"])
            attention_mask = np.asarray(batch["attention_mask"])
        except KeyError as exc:
            raise InputError(f"batch lacks {exc.args[0]!r}; pass the output of process_images/process_queries") from exc
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise InputError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be [B, L]")
        embeds = self.embed_tokens(input_ids)
        if "pixel_values" in batch and batch["pixel_values"] is not None:
            tokens = self.image_tokens(batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"])
            merge_image_tokens(embeds, input_ids, tokens, self.image_token_id)
        elif (input_ids == self.image_token_id).any():
            raise InputError("input_ids hold <image> tokens but the batch has no pixel_values")
        return self.text(embeds, attention_mask).astype(self.output_dtype, copy=False)
