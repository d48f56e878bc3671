"""``encode``'s ``.npz``: pages encoded on one machine (a GPU box, say) for ``index import`` on
another. The writer and the reader of the format, side by side.

Arrays: ``embeddings`` [rows, dim] (float16 or float32), ``offsets`` [pages + 1] int64, ``names``,
``pages`` int64, ``content_hashes``, ``sizes`` int64, ``layout_offsets`` [pages + 1] int64 and
``layouts`` [units, 3] int64 (``ProcessedPage.layout`` of each page), ``identity`` (the bundle
identity as JSON, checked against the index on import)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, UserError
from ..stores.base import PageRecord
from .stream import Encoded

__all__ = ["MAX_NPZ_BYTES", "NpzWriter", "check_name", "read_npz"]

NEEDED = ("embeddings", "offsets", "names", "pages", "content_hashes", "sizes", "identity")


class NpzWriter:
    """Collects encoded pages, then writes them at once (temp file, renamed into place)."""

    def __init__(self, dtype: str = "float16") -> None:
        self.dtype = dtype
        self.rows: list[np.ndarray] = []
        self.offsets = [0]
        self.names: list[str] = []
        self.pages: list[int] = []
        self.hashes: list[str] = []
        self.sizes: list[int] = []
        self.layouts: list[tuple] = []

    def __len__(self) -> int:
        return len(self.names)

    def add(self, item: Encoded) -> None:
        self.rows.append(item.embeddings.astype(self.dtype))
        self.offsets.append(self.offsets[-1] + len(item.embeddings))
        self.names.append(item.source.path)
        self.pages.append(item.source.page)
        self.hashes.append(item.source.content_hash)
        self.sizes.append(item.source.size)
        self.layouts.append(item.layout)

    def write(self, out: Path, identity: dict[str, Any]) -> None:
        tmp = out.with_name(f".{out.name}.tmp.npz")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                tmp,
                embeddings=np.concatenate(self.rows),
                offsets=np.asarray(self.offsets, np.int64),
                names=np.asarray(self.names, dtype=str),
                pages=np.asarray(self.pages, np.int64),
                # What `index import` needs to store these pages as `index add` would have.
                content_hashes=np.asarray(self.hashes, dtype=str),
                sizes=np.asarray(self.sizes, np.int64),
                layout_offsets=np.asarray(np.cumsum([0] + [len(x) for x in self.layouts]), np.int64),
                layouts=np.asarray([u for lay in self.layouts for u in lay], np.int64).reshape(-1, 3),
                identity=np.asarray(json.dumps(identity)),
            )
            tmp.replace(out)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise UserError(f"--out {out}: cannot write it ({exc.strerror or exc})") from exc


# What one import may hold in memory: far above a real file (10k pages x 266 rows x 128 fp16 is
# 0.7 GB), far below what a forged header could ask for.
MAX_NPZ_BYTES = 16 << 30
_INTS = ("offsets", "pages", "sizes", "layout_offsets", "layouts")
_TEXTS = ("names", "content_hashes", "identity")


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each member's declared shape and dtype, read from the zip without inflating any data."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    fmt = np.lib.format
                    version = fmt.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"{info.filename}: .npy format {version}, not one encode writes")
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _fortran, dtype = read(f)
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared > info.file_size:
                    raise StoreError(f"{path}: {info.filename} declares {declared} bytes but holds "
                                     f"{info.file_size}; the file is damaged")  # fmt: skip
                out[info.filename[:-4]] = (tuple(int(n) for n in shape), dtype)
            total = sum(i.file_size for i in zf.infolist())
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise StoreError(f"{path}: not a readable .npz ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if total > MAX_NPZ_BYTES:
        raise StoreError(f"{path}: unpacks to {total / 2**30:.1f} GiB, over the {MAX_NPZ_BYTES >> 30} GiB an import "
                         "reads at once; encode the pages in smaller files")  # fmt: skip
    return out


def _check_headers(path: Path, heads: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Shapes and dtypes that agree with one another, before anything is loaded; returns pages."""

    def bad(what: str) -> StoreError:
        return StoreError(f"{path}: {what}; the file is damaged or was not written by encode")

    missing = [k for k in NEEDED if k not in heads]
    if missing:
        raise StoreError(f"{path}: lacks {', '.join(missing)}; encode it again with this version "
                         "(python -m runtime encode)")  # fmt: skip
    for key, (_shape, dtype) in heads.items():
        if key in _INTS and dtype.kind not in "iu":
            raise bad(f"{key} is {dtype}, not integers")
        if key in _TEXTS and dtype.kind != "U":
            raise bad(f"{key} is {dtype}, not text")
    emb_shape, emb_dtype = heads["embeddings"]
    if emb_dtype not in (np.float16, np.float32) or len(emb_shape) != 2:
        raise bad(f"embeddings are {emb_dtype} {list(emb_shape)}, not float16/float32 [rows, dim]")
    if heads["identity"][0] != ():
        raise bad("identity is not one JSON text")
    n_shape = heads["names"][0]
    if len(n_shape) != 1:
        raise bad(f"names has shape {list(n_shape)}, not [pages]")
    n = n_shape[0]
    for key, want in (("pages", (n,)), ("content_hashes", (n,)), ("sizes", (n,)), ("offsets", (n + 1,)),
                      ("layout_offsets", (n + 1,))):  # fmt: skip
        if key in heads and heads[key][0] != want:
            raise bad(f"{key} has shape {list(heads[key][0])}; {n} page(s) need {list(want)}")
    if "layouts" in heads and (len(heads["layouts"][0]) != 2 or heads["layouts"][0][1] != 3):
        raise bad(f"layouts has shape {list(heads['layouts'][0])}, not [units, 3]")
    if ("layouts" in heads) != ("layout_offsets" in heads):
        raise bad("layouts and layout_offsets come together")
    return n


def read_npz(path: Path) -> tuple[dict[str, str], list[PageRecord]]:
    """An ``encode`` output -> (the bundle identity it was made with, its pages). Every array is
    checked against the others before a record is made: one line names what is wrong."""
    n = _check_headers(path, _headers(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable .npz ({' '.join(str(exc).split())})") from None
    except Exception as exc:  # zipfile's errors for a file damaged past its headers (bad CRC, bad deflate data)
        raise StoreError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None

    def bad(what: str) -> StoreError:
        return StoreError(f"{path}: {what}; the file is damaged or was not written by encode")

    try:
        identity = json.loads(str(data["identity"]))
    except (ValueError, RecursionError):
        raise bad("its bundle identity is not valid JSON") from None
    if not isinstance(identity, dict) or not all(isinstance(v, str) for v in identity.values()):
        raise bad("its bundle identity is not an object of texts")
    emb, off = data["embeddings"], data["offsets"].astype(np.int64)
    if len(off) and (off[0] != 0 or off[-1] != len(emb) or (np.diff(off) <= 0).any()):
        raise bad("offsets must start at 0, grow by at least one row per page and end at the row count")
    if not np.isfinite(emb).all():
        raise bad("embeddings hold NaN or infinite values")
    pages, sizes = data["pages"].astype(np.int64), data["sizes"].astype(np.int64)
    if (pages < 1).any() or (sizes < 0).any():
        raise bad("page numbers start at 1 and sizes are not negative")
    names = [str(x) for x in data["names"]]
    for name in names:
        check_name(path, name)
    keys = list(zip(names, pages.tolist(), strict=True))
    if len(set(keys)) != len(keys):
        raise bad("a (name, page) appears twice")
    hashes = [str(x) for x in data["content_hashes"]]
    if not all(hashes):
        raise bad("a content hash is empty")
    lay_off = data.get("layout_offsets", np.zeros(n + 1, np.int64)).astype(np.int64)
    lays = data.get("layouts", np.zeros((0, 3), np.int64)).astype(np.int64)
    if len(lay_off) and (lay_off[0] != 0 or lay_off[-1] != len(lays) or (np.diff(lay_off) < 0).any()):
        raise bad("layout_offsets must start at 0, never decrease and end at the unit count")
    records = []
    for i in range(n):
        rows = emb[off[i] : off[i + 1]].astype(np.float32)
        layout = tuple(tuple(int(v) for v in u) for u in lays[lay_off[i] : lay_off[i + 1]])
        _check_layout(bad, names[i], layout, len(rows))
        records.append(PageRecord(names[i], int(pages[i]), hashes[i], int(sizes[i]), rows, layout))
    return identity, records


def _check_layout(bad: Any, name: str, layout: tuple[tuple[int, int, int], ...], rows: int) -> None:
    """Units in row order, each inside the page's rows: what row/column pooling will index."""
    end = 0
    for start, h, w in layout:
        if start < end or h < 1 or w < 1 or start + h * w > rows:
            raise bad(f"{name}: layout unit ({start}, {h}, {w}) does not fit the page's {rows} rows")
        end = start + h * w


def check_name(source: Path | str, name: str) -> None:
    """A page's name is the absolute path the encoding machine saw, normalised: the same rule as a
    path ``index add`` stores, so ``remove`` and ``--missing`` treat imported pages like any other."""
    import os

    if not name or "\0" in name or not os.path.isabs(name) or os.path.normpath(name) != name or name.startswith("//"):
        raise StoreError(f"{source}: page name {name!r} is not an absolute, normalised path; encode writes those "
                         "(python -m runtime encode), a renamed or hand-made file is refused")  # fmt: skip
