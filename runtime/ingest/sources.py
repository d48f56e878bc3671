"""From paths to pages: ``iter_sources`` expands files and folders into pages (images, the frames
of multi-page TIFFs, and PDF pages rasterised with the optional pypdfium2), each a ``PageSource``
read lazily, or a ``Failed`` with a one-line reason; ``image_sources`` does the same for images
already in memory. A bad file never stops the walk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_FILE_MB",
    "IMAGE_SUFFIXES",
    "Failed",
    "PageSource",
    "image_sources",
    "iter_sources",
    "page_source",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PDF_SUFFIX = ".pdf"
DEFAULT_DPI = 150
# Files are read whole (hashed, then decoded): a bigger one is refused before a byte is read. A
# 500-page scanned PDF is ~200 MB; a 5 GB "image" is a mistake that would take the process down.
DEFAULT_MAX_FILE_MB = 512


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
class Failed:
    path: str
    page: int | None
    message: str


def _expand(paths: Sequence[str | os.PathLike]) -> Iterator[Path | Failed]:
    """The files ``paths`` name, each once: a file named twice (directly and through its folder, or
    through a link) is one file with one set of pages, as it is stored under its resolved path."""
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | {PDF_SUFFIX})
            if not found:
                yield Failed(str(p), None, f"{p}: folder holds no images or PDFs")
        elif p.is_file():
            found = [p]
        else:
            yield Failed(str(p), None, f"{p}: no such file or folder")
            continue
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                yield f


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


def iter_sources(
    paths: Sequence[str | os.PathLike], dpi: int = DEFAULT_DPI, max_file_mb: int = DEFAULT_MAX_FILE_MB
) -> Iterator[PageSource | Failed]:
    """Pages of ``paths`` (files and folders, recursively), in order; unreadable ones as ``Failed``.

    Every page of a PDF or a multi-page TIFF is a page; an animated GIF/WebP/PNG is its first frame
    (with a ``note`` saying so). All pages of one file come one after another. A file over
    ``max_file_mb`` MiB is a ``Failed``, never read."""
    if dpi <= 0:
        raise InputError(f"dpi must be positive, got {dpi}")
    limit = max_file_mb << 20
    for item in _expand(paths):
        if isinstance(item, Failed):
            yield item
            continue
        try:
            with open(item, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(limit + 1) if size <= limit else b""
        except OSError as exc:
            yield Failed(str(item), None, f"{item}: cannot be read ({exc.strerror or exc})")
            continue
        if size > limit or len(data) > limit:  # (a file still growing is caught by the bounded read)
            yield Failed(str(item), None, f"{item}: {max(size, len(data)) / 2**20:,.0f} MiB, over the {max_file_mb} "
                         "MiB a file may have; not read (raise --max-file-mb for a larger document)")  # fmt: skip
            continue
        digest = hashlib.sha256(data).hexdigest()
        if item.suffix.lower() == PDF_SUFFIX or data[:5] == b"%PDF-":
            yield from _pdf_pages(item, data, digest, dpi)
        else:
            yield from _image_pages(item, data, digest)


def page_source(path: str, page: int, dpi: int = DEFAULT_DPI) -> PageSource:
    """Page ``page`` (from 1) of one file, as ``iter_sources`` reads it; a one-line error otherwise."""
    if Path(path).is_dir():
        raise InputError(f"{path}: a folder; one page's file is needed")
    for src in iter_sources([path], dpi):
        if isinstance(src, Failed):
            raise InputError(src.message)
        if src.page == page:
            return src
    raise InputError(f"{path}: has no page {page}")


def image_sources(images: Iterable[Any]) -> Iterator[PageSource]:
    """In-memory images (paths, bytes, PIL images, HxWx3 arrays) as page sources, lazily."""
    from ..preprocess.image import describe_source

    for i, img in enumerate(images):
        name = describe_source(img)
        name = f"image {i} {name}" if name.startswith("<") else name  # errors say which item of the stream
        yield PageSource(name, 1, "", 0, lambda img=img: img)
