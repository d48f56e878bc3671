"""A seeded random walk of what happens to a user's files and index: contents swapped, copied,
edited, corrupted and deleted on disk; ``index add``, ``remove`` (by file, by folder, ``--missing``),
``import`` of npz files encoded here and on "another machine", and ``compact``, some of them killed
at a durable point. After every step the index must hold exactly what a model of the files says
(or, after a kill, each file either as before or as after), every stored page's rows must be its
current content's own encoding, and ``index check`` must pass."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from killers import KILL_AT_NTH_DURABLE_POINT
from PIL import Image

from export.demo import render_page
from runtime.__main__ import main
from runtime.stores.local.index import Index

STEPS = int(os.environ.get("COLLFM2_RANDOM_STEPS", "300"))
SEED = int(os.environ.get("COLLFM2_RANDOM_SEED", "2026"))  # another seed walks another way
CLI_KILLER = KILL_AT_NTH_DURABLE_POINT + "\nfrom runtime.__main__ import main\nsys.exit(main(sys.argv[3:]))\n"
WORDS = ["invoice", "total", "cat", "ocean", "graph", "revenue", "river", "table", "figure", "chart", "summary", "page"]

State = dict[str, str]  # stored path -> content sha256 (every file here has one page)


class World:
    """The files on disk, the contents ever written (to encode references from), and what the
    index should hold."""

    def __init__(self, root: Path, bundle: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bundle, self.idx = bundle, root / "idx"
        self.here, self.away = root / "docs", root / "away"  # "away": a folder only another machine has
        self.files = [self.here / f"f{i}.png" for i in range(5)] + [self.here / "sub" / f"g{i}.png" for i in range(2)]
        self.contents: dict[str, bytes] = {}
        self.corrupt: set[str] = set()
        self.model: State = {}
        self.reference: dict[str, np.ndarray] = {}
        self.npz = 0

    # -- contents -------------------------------------------------------------------------

    def new_content(self, good: bool = False) -> bytes:
        lines = [" ".join(self.rng.choices(WORDS, k=self.rng.randint(1, 4))) for _ in range(self.rng.randint(1, 6))]
        buf = io.BytesIO()
        render_page(lines).save(buf, format="PNG")
        data = buf.getvalue()
        if self.rng.random() < 0.08 and not good:  # a half-written download: never stored, and nothing stored is lost
            data = data[: len(data) // 3]
            self.corrupt.add(_sha(data))
        self.contents[_sha(data)] = data
        return data

    def write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def on_disk(self) -> list[Path]:
        return [f for f in self.files if f.exists()]

    def encodable(self, paths: list[Path]) -> State:
        return {str(p): s for p in paths if (s := _sha(p.read_bytes())) not in self.corrupt}

    # -- the index ------------------------------------------------------------------------

    def stored(self) -> State:
        with Index.open(self.idx) as index:
            return {p["path"]: p["content_hash"] for p in index.pages()}

    def verify_rows(self, model: object) -> None:
        """Every stored page's rows are its content's own encoding (never another file's rows)."""
        with Index.open(self.idx) as index:
            for p in index.pages():
                rows, digest = index.page_rows(p["path"], p["page"])
                if digest not in self.reference:
                    image = Image.open(io.BytesIO(self.contents[digest]))
                    self.reference[digest] = next(iter(model.embed_images([image.convert("RGB")])))
                np.testing.assert_allclose(rows, self.reference[digest], atol=3e-3, err_msg=p["path"])

    def check(self) -> None:
        with Index.open(self.idx) as index:
            assert index.check() == []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli(argv: list[str], kill_at: int) -> int | None:
    """Exit code of the CLI run in this process, or in a child killed at its ``kill_at``-th durable
    point (None when it was killed; a child that finished first returns its code)."""
    if not kill_at:
        try:
            return main(argv)
        except SystemExit as exc:  # argparse
            return int(exc.code)
    res = subprocess.run([sys.executable, "-c", CLI_KILLER, "_", str(kill_at), *argv],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "Traceback" not in res.stderr, res.stderr
    if res.returncode not in (0, -signal.SIGKILL):
        print(res.stderr, file=sys.stderr)  # the child's one line, for the failing step's report
    return None if res.returncode == -signal.SIGKILL else res.returncode


def _step(w: World) -> tuple[str, int | None, State, State]:
    """One random event. Returns what it was, the CLI's code (None: killed; 0 and no CLI for a
    file event), and the model before and after."""
    rng, before = w.rng, dict(w.model)
    present = w.on_disk()
    kill_at = rng.randint(1, 8) if rng.random() < 0.3 else 0
    add = ["index", "add", "--index", str(w.idx), "--no-progress", "--commit-pages", rng.choice(["1", "2", "16"])]
    op = rng.choices(["swap", "copy", "edit", "delete", "add", "remove", "import", "compact"],
                     weights=[3, 2, 4, 1, 6, 2, 2, 1])[0]  # fmt: skip
    if op == "swap" and len(present) >= 2:
        a, b = rng.sample(present, 2)
        da, db = a.read_bytes(), b.read_bytes()
        w.write(a, db)
        w.write(b, da)
        return f"swap {a.name} {b.name}", 0, before, before
    if op == "copy" and present:
        src, dst = rng.choice(present), rng.choice(w.files)
        if src != dst:
            w.write(dst, src.read_bytes())
        return f"copy {src.name} {dst.name}", 0, before, before
    if op == "edit" or (op in ("swap", "copy") and not present):
        f = rng.choice(w.files)
        w.write(f, w.new_content())
        return f"edit {f.name}", 0, before, before
    if op == "delete" and present:
        f = rng.choice(present)
        f.unlink()
        return f"delete {f.name}", 0, before, before
    if op == "remove" and before:
        choice = rng.random()
        if choice < 0.35:
            names = [rng.choice(sorted(before))]
            gone = set(names)
            argv = names
        elif choice < 0.55:
            folder = rng.choice([w.here / "sub", w.away])
            argv = [str(folder)]
            gone = {p for p in before if p.startswith(str(folder) + os.sep)}
        else:
            argv = ["--missing"]
            gone = {p for p in before if not os.path.lexists(p) and os.path.isdir(os.path.dirname(p))}
        after = {p: s for p, s in before.items() if p not in gone}
        code = _cli(["index", "remove", "--index", str(w.idx), *argv], kill_at)
        assert code in (None, 0 if gone else 1), (op, argv, code)
        return f"remove {argv}", code, before, after
    if op == "import":
        away = rng.random() < 0.4
        if away:  # pages encoded on a machine whose folder this one does not have
            w.away.mkdir(exist_ok=True)
            srcs = [w.away / f"a{rng.randint(0, 3)}.png" for _ in range(rng.randint(1, 2))]
            for f in srcs:
                w.write(f, w.new_content())
        else:
            srcs = rng.sample(present, min(len(present), rng.randint(1, 3))) if present else []
        if not srcs:
            return "import (nothing)", 0, before, before
        w.npz += 1
        npz = w.idx.parent / f"batch{w.npz}.npz"
        encodable = w.encodable(srcs)
        code = main(["encode", "--bundle", str(w.bundle), "--precision", "fp32", "--out", str(npz), *map(str, srcs)])
        assert code == (0 if len(encodable) == len(set(srcs)) else 1 if encodable else 2), code
        if away:
            shutil.rmtree(w.away)
        if not encodable:
            return "import (nothing encodable)", 0, before, before
        after = {**before, **encodable}
        code = _cli(["index", "import", "--index", str(w.idx), "--commit-pages", rng.choice(["1", "16"]), str(npz)],
                    kill_at)  # fmt: skip
        assert code in (None, 0), code
        return f"import {[p.name for p in srcs]}", code, before, after
    if op == "compact":
        code = _cli(["index", "compact", "--index", str(w.idx)], kill_at)
        assert code in (None, 0), code
        return "compact", code, before, before
    # add: the whole folder, its subfolder, or some files
    pick = rng.random()
    targets = [w.here] if pick < 0.4 else [w.here / "sub"] if pick < 0.5 else rng.sample(w.files, rng.randint(1, 3))
    targets = [t for t in targets if t.exists()]
    if not targets:
        return "add (nothing)", 0, before, before
    files = [f for f in w.on_disk() if any(f == t or t in f.parents for t in targets)]
    encodable = w.encodable(files)
    after = {**before, **encodable}
    code = _cli([*add, *map(str, targets)], kill_at)
    empty = [t for t in targets if t.is_dir() and not any(t in f.parents for f in files)]  # a failure too
    failed = len(files) - len(encodable) + len(empty)
    assert code in (None, 0 if not failed else 1 if encodable else 2), (f"add {targets}", code)
    return f"add {[t.name for t in targets]}", code, before, after


def test_random_files_and_commands_keep_the_index_true(tiny_bundle: Path, tmp_path: Path) -> None:
    from runtime.encoder.model import ColLFM2

    model = ColLFM2.from_pretrained(str(tiny_bundle), precision="fp32")
    w = World(tmp_path, tiny_bundle, SEED)
    for f in w.files[:3]:
        w.write(f, w.new_content(good=True))  # so that the index exists
    assert main(["index", "add", "--index", str(w.idx), "--bundle", str(tiny_bundle), "--precision", "fp32",
                 "--no-progress", str(w.here)]) == 0  # fmt: skip
    w.model = w.stored()
    seen: dict[str, int] = {}
    for step in range(STEPS):
        what, code, before, after = _step(w)
        seen[what.split()[0]] = seen.get(what.split()[0], 0) + 1
        got = w.stored()
        if code is None:  # killed: each file as before or as after, and nothing else
            seen["killed"] = seen.get("killed", 0) + 1
            for p in set(before) | set(after) | set(got):
                assert got.get(p) in (before.get(p), after.get(p)), (step, what, p)
            w.model = got
        else:
            assert got == after, (step, what, sorted(set(got.items()) ^ set(after.items())))
            w.model = after
            w.check()
        w.verify_rows(model)
    # every kind of event happened, and kills landed inside commits
    assert all(seen.get(k, 0) >= 3 for k in ("swap", "copy", "edit", "add", "remove", "import", "compact")), seen
    assert seen.get("killed", 0) >= 5, seen
    print(f"seed {SEED}, {STEPS} steps: {seen}")
    assert main(["index", "add", "--index", str(w.idx), "--no-progress", str(w.here)]) in (0, 1)
    w.check()
    assert w.stored() == {**w.model, **w.encodable(w.on_disk())}
