"""The runtime's shared thread pool: order, errors, spans, and the BLAS thread limit."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime import workers
from runtime.preprocess.resize import resize_uint8


@pytest.fixture
def pool3(monkeypatch: pytest.MonkeyPatch):
    """A real three-worker pool whatever the machine or COLLFM2_THREADS says (1 turns it off)."""
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(3, thread_name_prefix="collfm2-test")
    monkeypatch.setattr(workers, "_pool", [(executor, 3)])
    yield executor
    executor.shutdown(wait=True)


def test_parallel_map_keeps_order_and_uses_the_caller(pool3) -> None:
    names: list[str] = []

    def fn(x: int) -> int:
        names.append(threading.current_thread().name)
        time.sleep(0.01)
        return x * x

    assert workers.parallel_map(fn, list(range(7))) == [x * x for x in range(7)]
    assert threading.current_thread().name in names  # the caller works too
    assert any(n.startswith("collfm2-test") for n in names)  # and the pool does
    assert workers.parallel_map(fn, []) == []


def test_parallel_map_raises_only_after_every_item_finished(pool3) -> None:
    finished: list[int] = []

    def fn(x: int) -> int:
        if x == 0:
            raise ValueError("item 0 is bad")
        time.sleep(0.05)
        finished.append(x)
        return x

    with pytest.raises(ValueError, match="item 0 is bad"):
        workers.parallel_map(fn, [0, 1, 2, 3])
    # A worker still writing after the caller saw the error could corrupt a reused buffer.
    assert sorted(finished) == [1, 2, 3]


@pytest.mark.parametrize("n,parts,align", [(0, 2, 1), (1, 2, 1), (7, 2, 1), (1754, 2, 128), (10, 3, 4), (5, 8, 1)])
def test_split_range_covers_every_index_once(n: int, parts: int, align: int) -> None:
    spans = list(workers.split_range(n, parts, align))
    assert len(spans) <= max(parts, 1)
    covered = [i for a, b in spans for i in range(a, b)]
    assert covered == list(range(n))
    assert all((b - a) % align == 0 for a, b in spans[:-1])


def test_single_threaded_blas_is_reference_counted_and_restored() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if workers.worker_count() < 2:
        pytest.skip("one core: the limit is deliberately not applied")
    blas = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    if not blas:
        pytest.skip("numpy's BLAS is not one threadpoolctl can control")

    def threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]

    before = threads()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        outer = threads()
        with workers.single_threaded_blas():
            assert threads() == [1] * len(blas)
            with workers.single_threaded_blas():  # a second caller, e.g. another thread
                assert threads() == [1] * len(blas)
            assert threads() == [1] * len(blas)  # still held by the first
        assert threads() == outer
    assert threads() == before


def test_threaded_resize_matches_a_single_thread(pool3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split across threads (transposition rows, bands) changes nothing in the result."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (700, 530, 3), dtype=np.uint8)
    assert workers.worker_count() == 3  # really threaded, on any machine
    threaded = resize_uint8(img, 512, 384)
    monkeypatch.setattr(workers, "_pool", [(None, 1)])
    assert workers.worker_count() == 1
    single = resize_uint8(img, 512, 384)
    np.testing.assert_array_equal(threaded, single)


def test_thread_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLFM2_THREADS", "3")
    assert workers._max_workers() == 3
    monkeypatch.setenv("COLLFM2_THREADS", "nonsense")
    assert 1 <= workers._max_workers() <= 8
