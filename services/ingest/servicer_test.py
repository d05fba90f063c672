"""The in-flight budget: bounded, fair, and never leaking capacity on timeouts or cancellation."""

import asyncio

from services.ingest.servicer import InFlightBudget


def run(coroutine):
    return asyncio.run(coroutine)


def test_acquire_within_capacity_and_release():
    async def scenario():
        budget = InFlightBudget(10)
        assert await budget.acquire(6, 0)
        assert not await budget.acquire(5, 0)
        assert await budget.acquire(4, 0)
        budget.release(10)
        assert budget.used == 0
        assert not await budget.acquire(11, 1)  # can never fit
    run(scenario())


def test_waiters_get_capacity_in_order_when_released():
    async def scenario():
        budget = InFlightBudget(10)
        await budget.acquire(10, 0)
        first = asyncio.ensure_future(budget.acquire(6, 5))
        second = asyncio.ensure_future(budget.acquire(4, 5))
        await asyncio.sleep(0)
        budget.release(6)
        assert await first
        await asyncio.sleep(0)
        assert not second.done()  # 4 still held + 6 granted: full
        budget.release(4)
        assert await second
        assert budget.used == 10
    run(scenario())


def test_timeout_and_cancellation_leave_nothing_held():
    async def scenario():
        changes = []
        budget = InFlightBudget(10, on_change=changes.append)
        await budget.acquire(10, 0)
        assert not await budget.acquire(5, 0.05)
        waiter = asyncio.ensure_future(budget.acquire(5, 5))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        budget.release(10)
        assert budget.used == 0 and changes[-1] == 0
        # A large waiter giving up lets a small one behind it in.
        await budget.acquire(8, 0)
        big = asyncio.ensure_future(budget.acquire(5, 0.05))
        small = asyncio.ensure_future(budget.acquire(2, 1))
        assert not await big
        assert await small
        assert budget.used == 10
    run(scenario())
