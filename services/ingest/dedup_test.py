"""The duplicate window: per tenant, bounded by count and age."""

from services.ingest.dedup import DedupWindow


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_remembered_ids_are_duplicates_per_tenant():
    window = DedupWindow(max_per_tenant=10, ttl_seconds=60, clock=Clock())
    window.remember("t1", ["a", "b"])
    assert window.seen("t1", "a") and window.seen("t1", "b")
    assert not window.seen("t2", "a")
    assert not window.seen("t1", "c")


def test_ids_expire_after_the_ttl():
    clock = Clock()
    window = DedupWindow(max_per_tenant=10, ttl_seconds=60, clock=clock)
    window.remember("t1", ["a"])
    clock.now += 59
    window.remember("t1", ["b"])
    assert window.seen("t1", "a")
    clock.now += 2
    assert not window.seen("t1", "a")
    assert window.seen("t1", "b")
    clock.now += 100
    window.remember("t1", ["c"])  # expired entries are swept on the way
    assert len(window) == 1


def test_each_tenant_keeps_only_its_newest_ids():
    window = DedupWindow(max_per_tenant=3, ttl_seconds=3600, clock=Clock())
    window.remember("t1", ["a", "b", "c", "d"])
    assert not window.seen("t1", "a")
    assert all(window.seen("t1", x) for x in "bcd")
    window.remember("t1", ["b"])  # refreshed: now the newest
    window.remember("t1", ["e"])
    assert window.seen("t1", "b") and not window.seen("t1", "c")
    window.remember("t2", ["x"])  # another tenant does not evict t1's ids
    assert len(window) == 4


def test_a_zero_window_remembers_nothing():
    window = DedupWindow(max_per_tenant=0, ttl_seconds=3600, clock=Clock())
    window.remember("t1", ["a"])
    assert not window.seen("t1", "a")
