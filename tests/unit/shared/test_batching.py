import asyncio
import threading
import time

import pytest

from shared.batching import AsyncBatcher, Batcher


def _run_concurrently(count: int, target) -> None:  # noqa: ANN001
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a caller never returned"


def test_concurrent_calls_share_batches_and_each_gets_its_own_result():
    batch_sizes: list[int] = []
    gate = threading.Event()

    def square_all(items: list[int]) -> list[int]:
        batch_sizes.append(len(items))
        gate.wait(timeout=0.01)  # slow enough that the other callers queue up meanwhile
        return [item * item for item in items]

    batcher = Batcher(square_all)
    results: dict[int, int] = {}
    _run_concurrently(64, lambda i: results.__setitem__(i, batcher.call(i)))

    assert results == {i: i * i for i in range(64)}
    assert sum(batch_sizes) == 64
    assert len(batch_sizes) < 64  # calls were batched, not run one at a time


def test_a_failing_item_fails_only_its_own_caller():
    def reciprocal_all(items: list[int]) -> list[float]:
        return [1 / item for item in items]  # 0 makes the whole batch fail

    batcher = Batcher(reciprocal_all)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher.call(i % 8)
        except ZeroDivisionError as exc:
            results[i] = exc

    _run_concurrently(40, call)
    for i, result in results.items():
        if i % 8 == 0:
            assert isinstance(result, ZeroDivisionError)
        else:
            assert result == pytest.approx(1 / (i % 8))
    assert len(results) == 40


def test_the_lead_passes_on_after_an_error_so_no_caller_waits_forever():
    def fail(items: list[int]) -> list[int]:
        raise RuntimeError("database away")

    batcher = Batcher(fail)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            batcher.call(i)
        except RuntimeError as exc:
            errors.append(exc)

    _run_concurrently(16, call)
    assert len(errors) == 16


# --- AsyncBatcher: the same for tasks of one event loop, batches run in the batcher's thread ---


def test_async_calls_share_batches_and_each_gets_its_own_result_or_error():
    batch_sizes: list[int] = []
    loop_threads: set[str] = set()

    def reciprocal_all(items: list[int]) -> list[float]:
        batch_sizes.append(len(items))
        loop_threads.add(threading.current_thread().name)
        time.sleep(0.01)  # slow enough that the other callers queue up meanwhile
        return [1 / item for item in items]  # 0 fails the batch; each item then runs alone

    batcher = AsyncBatcher(reciprocal_all, "test-batcher")

    async def call_all() -> list[object]:
        async def one(i: int) -> object:
            try:
                return await batcher.call(i % 8)
            except ZeroDivisionError as exc:
                return exc

        return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(call_all())
    batcher.close()
    for i, result in enumerate(results):
        if i % 8 == 0:
            assert isinstance(result, ZeroDivisionError)
        else:
            assert result == pytest.approx(1 / (i % 8))
    assert len(batch_sizes) < 64 + 8  # batched (plus the one-by-one reruns of failed batches)
    assert max(batch_sizes) > 1
    assert all(name.startswith("test-batcher") for name in loop_threads)  # never on the loop


def test_async_calls_arriving_within_the_linger_share_one_batch():
    batch_sizes: list[int] = []

    def double_all(items: list[int]) -> list[int]:
        batch_sizes.append(len(items))
        return [2 * item for item in items]

    batcher = AsyncBatcher(double_all, "test-batcher", linger_s=0.5)

    async def call_spread_out() -> list[int]:
        async def one(i: int) -> int:
            await asyncio.sleep(0.01 * i)  # 10 calls over 90 ms, well inside the linger
            return await batcher.call(i)

        return await asyncio.gather(*(one(i) for i in range(10)))

    try:
        assert asyncio.run(call_spread_out()) == [2 * i for i in range(10)]
    finally:
        batcher.close()
    assert batch_sizes == [10]
