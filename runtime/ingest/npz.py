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

__all__ = ["NpzWriter", "read_npz"]

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


def read_npz(path: Path) -> tuple[dict[str, str], list[PageRecord]]:
    """An ``encode`` output -> (the bundle identity it was made with, its pages)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable .npz ({exc})") from exc
    missing = [k for k in NEEDED if k not in data]
    if missing:
        raise StoreError(f"{path}: lacks {', '.join(missing)}; encode it again with this version "
                         "(python -m runtime encode)")  # fmt: skip
    try:
        identity = json.loads(str(data["identity"]))
    except ValueError as exc:
        raise StoreError(f"{path}: its bundle identity is not valid JSON") from exc
    emb, off = data["embeddings"], data["offsets"]
    n = len(data["names"])
    if len(off) != n + 1 or off[-1] != len(emb) or emb.ndim != 2:
        raise StoreError(f"{path}: offsets, names and embeddings disagree; the file is damaged")
    lay_off = data.get("layout_offsets", np.zeros(n + 1, np.int64))
    lays = data.get("layouts", np.zeros((0, 3), np.int64))
    records = []
    for i in range(n):
        layout = tuple(tuple(int(v) for v in u) for u in lays[lay_off[i] : lay_off[i + 1]]) if len(lay_off) > i else ()
        rows = emb[off[i] : off[i + 1]].astype(np.float32)
        path_i, page, digest = str(data["names"][i]), int(data["pages"][i]), str(data["content_hashes"][i])
        records.append(PageRecord(path_i, page, digest, int(data["sizes"][i]), rows, layout))
    return identity, records
