"""Invariants of the behaviour model, over many seeds, visitors and clocks (hypothesis)."""

import collections
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ws_gateway import model, protocol

START = 1_750_000_000.0


def walk(seed: int, index: int, steps: int, late_fraction: float = 0.05, ticks=None):
    visitor = model.Visitor(index, seed, "run1", late_fraction=late_fraction, max_lateness_seconds=60.0)
    now = START
    out = []
    for n in range(steps):
        step = visitor.step(now)
        object.__setattr__(step, "_now", now)  # the clock it was made at, for the lateness check
        out.append(step)
        # The emulator's clock: usually the model's wait, sometimes a stalled or jumping clock.
        now += ticks[n % len(ticks)] if ticks else step.wait
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), index=st.integers(0, 500), steps=st.integers(1, 400),
       ticks=st.one_of(st.none(), st.lists(st.floats(-2.0, 30.0, allow_nan=False), min_size=1, max_size=8)))
def test_sessions_carts_and_clock(seed, index, steps, ticks):
    steps_ = walk(seed, index, steps, ticks=ticks)
    sessions_seen = set()
    current = None
    cart = collections.Counter()
    checkout = False
    last_time = None
    clock = 0
    for step in steps_:
        m = step.message
        if step.new_session:
            assert m["session_id"] not in sessions_seen, "a session id is never reused"
            assert m["event_type"] == "page_view", "a session opens with a page view"
            sessions_seen.add(m["session_id"])
            current, cart, checkout = m["session_id"], collections.Counter(), False
        assert m["session_id"] == current, "session id stable within a session"
        props = m.get("properties", {})
        if m["event_type"] == "add_to_cart":
            cart[props["product_id"]] += props["quantity"]
        elif m["event_type"] == "remove_from_cart":
            assert cart[props["product_id"]] == props["quantity"], "removes what the cart holds"
            del cart[props["product_id"]]
        elif m["event_type"] == "checkout":
            assert sum(cart.values()) > 0, "checkout needs a non-empty cart"
            assert props["item_count"] == sum(cart.values())
            checkout = True
        elif m["event_type"] == "purchase":
            assert checkout and sum(cart.values()) > 0, "purchase only after add-to-cart and checkout in the session"
            assert props["item_count"] == sum(cart.values())
            cart, checkout = collections.Counter(), False
        # The visitor's clock: wall time, nudged forward so that it never repeats or goes back.
        clock = max(int(step._now * 1000), clock + 1)
        if not step.late:
            assert m["client_time"] == clock
            assert last_time is None or m["client_time"] > last_time, "client_time monotonic unless late"
            last_time = m["client_time"]
        else:
            assert m["client_time"] <= clock - 1000, "a late event lies at least 1 s behind the visitor's clock"
        assert step.wait > 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), index=st.integers(0, 50))
def test_every_event_is_valid_protocol(seed, index):
    for step in walk(seed, index, 300):
        event = protocol.parse_event(step.message)
        assert event.event_id == step.message["event_id"]
        assert event.client_time.ToMilliseconds() == step.message["client_time"]


def test_deterministic_for_a_seed():
    a = [s.message for s in walk(11, 3, 200)]
    b = [s.message for s in walk(11, 3, 200)]
    assert a == b
    assert a != [s.message for s in walk(12, 3, 200)]


def test_behaviour_mix_and_returning_users():
    steps = [s for i in range(40) for s in walk(5, i, 400, late_fraction=0.02)]
    types = collections.Counter(s.message["event_type"] for s in steps)
    for event_type in protocol.EVENT_TYPES:
        assert types[event_type] > 0, event_type
    assert types["purchase"] <= types["checkout"] <= types["add_to_cart"]
    late = sum(s.late for s in steps) / len(steps)
    assert 0.01 < late < 0.03
    # Visitors come back: several sessions per anonymous id (returning users), and new visitors appear.
    sessions_per_visitor = collections.defaultdict(set)
    for s in steps:
        sessions_per_visitor[s.message["anonymous_id"]].add(s.message["session_id"])
    assert max(len(v) for v in sessions_per_visitor.values()) >= 3
    assert len(sessions_per_visitor) > 40
    # Idle gaps between sessions are longer than the think time within one.
    in_session = [s.wait for a, s in zip(steps, steps[1:]) if not s.new_session]
    assert statistics.mean(in_session) < model.IDLE_RANGE[0]


def test_mean_wait_matches_the_pacing_constant():
    waits = [s.wait for i in range(50) for s in walk(9, i, 1000, late_fraction=0.0)]
    assert abs(statistics.mean(waits) - model.MEAN_WAIT) < 0.2 * model.MEAN_WAIT, statistics.mean(waits)


def test_late_events_arrive_out_of_order():
    steps = walk(3, 0, 2000, late_fraction=0.1)
    times = [s.message["client_time"] for s in steps]
    inversions = sum(1 for a, b in zip(times, times[1:]) if b < a)
    assert inversions >= 100
