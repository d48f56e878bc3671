"""From paths to encoded pages, as a stream: memory stays flat however many pages come.

``iter_sources`` expands files and folders into pages (images, and PDF pages rasterised with the
optional pypdfium2). ``encode_stream`` preprocesses pages in a background thread, batches them by
tile count, runs ``ColLFM2`` on each batch while the next is being preprocessed, and yields one
result per page, in input order: ``Encoded``, ``Skipped`` (already indexed) or ``Failed``
(a one-line reason). A bad page never stops the stream.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "Encoded",
    "Failed",
    "PageSource",
    "Skipped",
    "encode_stream",
    "image_sources",
    "iter_sources",
    "progress",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PDF_SUFFIX = ".pdf"
DEFAULT_DPI = 150
# Tiles per model call: a page is 1 (small) to 11 (tiled A4 + thumbnail) tiles.
DEFAULT_BATCH_TILES = 8


@dataclass(frozen=True)
class PageSource:
    path: str  # absolute (surrogate-escaped where the name is not UTF-8, as os gives it)
    page: int  # 1-based; single images are page 1
    content_hash: str  # sha256 of the file bytes (+ "#p<n>" for the pages of PDFs and multi-page TIFFs)
    size: int  # bytes of the source file
    load: Callable[[], Any]  # -> PIL image or encoded bytes, read lazily
    pages: int = 1  # pages in the file
    note: str | None = None  # something the user should know (an animation reduced to its first frame)

    @property
    def name(self) -> str:
        return f"{self.path}#{self.page}" if self.pages > 1 or self.path.lower().endswith(PDF_SUFFIX) else self.path


@dataclass(frozen=True)
class Encoded:
    source: PageSource
    embeddings: np.ndarray  # [n, 128] real rows
    layout: tuple[tuple[int, int, int], ...] = ()  # per tile: (first row, token grid h, w); runtime.stores.compact


@dataclass(frozen=True)
class Skipped:
    source: PageSource
    reason: str


@dataclass(frozen=True)
class Failed:
    path: str
    page: int | None
    message: str


def _expand(paths: Sequence[str | os.PathLike]) -> Iterator[Path | Failed]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | {PDF_SUFFIX})
            if not found:
                yield Failed(str(p), None, f"{p}: folder holds no images or PDFs")
            yield from found
        elif p.is_file():
            yield p
        else:
            yield Failed(str(p), None, f"{p}: no such file or folder")


def _pdf_pages(path: Path, data: bytes, digest: str, dpi: int) -> Iterator[PageSource | Failed]:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        yield Failed(str(path), None, f"{path}: PDF support needs pypdfium2 (pip install 'collfm2-edge[pdf]')")
        return
    try:
        doc = pdfium.PdfDocument(data)
        n = len(doc)
    except Exception as exc:  # pdfium raises its own error types for every kind of damage
        yield Failed(str(path), None, f"{path}: not a readable PDF ({' '.join(str(exc).split())})")
        return
    if n == 0:
        yield Failed(str(path), None, f"{path}: PDF has no pages")
    from ..preprocess.image import MAX_IMAGE_PIXELS

    for i in range(n):
        try:
            w_pt, h_pt = doc[i].get_size()
        except Exception as exc:
            yield Failed(str(path), i + 1, f"{path} page {i + 1}: unreadable page ({' '.join(str(exc).split())})")
            continue
        # Refuse before rendering: pdfium would allocate the whole bitmap (a 200-inch page at 150 dpi
        # is 900 Mpx, 6 GB of RAM) before the decoder's pixel limit could say no.
        pixels = (w_pt * dpi / 72.0) * (h_pt * dpi / 72.0)
        if pixels > MAX_IMAGE_PIXELS:
            fit = max(1, int(dpi * (MAX_IMAGE_PIXELS / pixels) ** 0.5))
            yield Failed(str(path), i + 1, f"{path} page {i + 1}: {w_pt / 72:.0f}x{h_pt / 72:.0f} in at {dpi} dpi is "
                         f"{pixels / 1e6:.0f} Mpx, over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; use --dpi {fit} or "
                         "lower")  # fmt: skip
            continue

        def render(i: int = i) -> Any:
            try:
                return doc[i].render(scale=dpi / 72.0).to_pil()
            except Exception as exc:
                raise InputError(f"{path} page {i + 1}: cannot be rendered ({exc})") from exc

        yield PageSource(str(path.resolve()), i + 1, f"{digest}#p{i + 1}", len(data), render, pages=n)


# Formats whose frames are pages of a document; other multi-frame formats are animations.
MULTIPAGE_FORMATS = {"TIFF"}


def _frames(data: bytes) -> tuple[int, str | None]:
    """(frames, PIL format) from the header alone; (1, None) when Pillow cannot tell."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(getattr(img, "n_frames", 1) or 1), img.format
    except Exception:  # the decoder reports unreadable files with their reason, later
        return 1, None


def _frame(data: bytes, index: int) -> Any:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.seek(index)
    return img


def _image_pages(item: Path, data: bytes, digest: str) -> Iterator[PageSource]:
    path = str(item.resolve())
    n, fmt = _frames(data)
    if n > 1 and fmt in MULTIPAGE_FORMATS:
        for i in range(n):
            yield PageSource(path, i + 1, f"{digest}#p{i + 1}", len(data),
                             lambda i=i: _frame(data, i), pages=n)  # fmt: skip
        return
    note = f"{item}: animated {fmt} ({n} frames); its first frame is indexed" if n > 1 else None
    yield PageSource(path, 1, digest, len(data), lambda: data, note=note)


def iter_sources(paths: Sequence[str | os.PathLike], dpi: int = DEFAULT_DPI) -> Iterator[PageSource | Failed]:
    """Pages of ``paths`` (files and folders, recursively), in order; unreadable ones as ``Failed``.

    Every page of a PDF or a multi-page TIFF is a page; an animated GIF/WebP/PNG is its first frame
    (with a ``note`` saying so). All pages of one file come one after another."""
    if dpi <= 0:
        raise InputError(f"dpi must be positive, got {dpi}")
    for item in _expand(paths):
        if isinstance(item, Failed):
            yield item
            continue
        try:
            data = item.read_bytes()
        except OSError as exc:
            yield Failed(str(item), None, f"{item}: cannot be read ({exc.strerror or exc})")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if item.suffix.lower() == PDF_SUFFIX or data[:5] == b"%PDF-":
            yield from _pdf_pages(item, data, digest, dpi)
        else:
            yield from _image_pages(item, data, digest)


_DONE = object()


def encode_stream(
    model: Any,
    processor: Any,
    sources: Iterable[PageSource | Failed],
    batch_tiles: int = DEFAULT_BATCH_TILES,
    skip: Callable[[PageSource], str | None] | None = None,
    batch_pages: int | None = None,
) -> Iterator[Encoded | Skipped | Failed]:
    """Encode pages with ``model`` (``runtime.ColLFM2``), preprocessing ahead in a thread.

    A model call takes pages until they hold ``batch_tiles`` tiles (or ``batch_pages`` pages).
    ``skip(source)`` may return a reason not to encode a page (e.g. already indexed).
    """
    from ..preprocess.processor import collate_pages

    q: queue.Queue = queue.Queue(maxsize=max(2, 2 * batch_tiles))
    stop = threading.Event()

    def produce() -> None:
        try:
            for src in sources:
                if stop.is_set():
                    return
                if isinstance(src, Failed):
                    q.put(src)
                    continue
                reason = skip(src) if skip else None
                if reason:
                    q.put(Skipped(src, reason))
                    continue
                try:
                    # Pages arrive as bytes or a rendered PDF page: errors name the file and page.
                    page = processor.process_image(src.load(), name=src.name)
                except UserError as exc:
                    q.put(Failed(src.path, src.page, str(exc)))
                    continue
                q.put((src, page))
        except BaseException as exc:  # surface bugs in the consumer, with their traceback
            q.put(exc)
        finally:
            q.put(_DONE)

    worker = threading.Thread(target=produce, name="collfm2-preprocess", daemon=True)
    worker.start()
    batch: list[tuple[PageSource, Any]] = []
    tiles = 0
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, (Failed, Skipped)):
                # In input order: the pages before it go first. (The index commits a file's pages
                # together, and a failure overtaking them would split a file across commits.)
                if batch:
                    yield from _run_batch(model, batch, collate_pages)
                    batch, tiles = [], 0
                yield item
                continue
            batch.append(item)
            tiles += item[1].pixel_values.shape[0]
            if tiles >= batch_tiles or (batch_pages is not None and len(batch) >= batch_pages):
                yield from _run_batch(model, batch, collate_pages)
                batch, tiles = [], 0
        if batch:
            yield from _run_batch(model, batch, collate_pages)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _run_batch(model: Any, batch: list, collate: Callable) -> Iterator[Encoded]:
    inputs = collate([page for _, page in batch])
    for (src, page), rows in zip(batch, model.encode_rows(inputs), strict=True):
        yield Encoded(src, rows, page.layout)


def image_sources(images: Iterable[Any]) -> Iterator[PageSource]:
    """In-memory images (paths, bytes, PIL images, HxWx3 arrays) as page sources, lazily."""
    from ..preprocess.image import describe_source

    for i, img in enumerate(images):
        name = describe_source(img)
        name = f"image {i} {name}" if name.startswith("<") else name  # errors say which item of the stream
        yield PageSource(name, 1, "", 0, lambda img=img: img)


def progress(total: int | None, desc: str, enabled: bool | None = None) -> Any:
    """A tqdm bar on a TTY (stdout), else a silent stand-in with the same ``update``/``close``."""
    import sys

    if enabled is None:
        enabled = sys.stdout.isatty()
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="page")
        except ImportError:
            pass

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Quiet()
