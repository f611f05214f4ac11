"""The deadline wheel (``timers.pxi``) on a real uvloop loop, in process.

Every connection's timeouts (head, body, keep-alive, upstream) and every hold queue's
expiry go through it, so what matters is checked here directly: a deadline never fires
early (how late, a tick at most, is for the benchmarks to see), moving deadlines inside
a firing tick works, one failing handler does not silence the other timeouts of its
tick, and an absurd deadline cannot make the loop spin. End-to-end timeout behaviour is in the proxy
suites (test_proxy_errors, test_slowloris, test_hold_bounds).
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import uvloop

from fastpause._core import Deadline, TimerWheel

TICK = 0.05
YEAR = 365 * 86400.0


@pytest.fixture
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def inside_one_tick(ahead: float) -> float:
    """A time about ``ahead`` seconds from now, in the middle of its tick."""
    return math.ceil((now() + ahead) / TICK) * TICK - TICK / 2


def run_until(loop, done: asyncio.Event | None = None, timeout: float = 10.0) -> None:
    """Run the loop until ``done`` is set (or the timeout passes: the test then fails)."""

    async def wait() -> None:
        await asyncio.wait_for(done.wait(), timeout)

    loop.run_until_complete(wait())


def test_deadlines_fire_never_early_at_most_a_tick_late_and_free_their_ticks(loop):
    wheel = TimerWheel(loop)
    done = asyncio.Event()
    lateness: list[float] = []
    start = now()
    deadlines = []
    for i in range(300):
        when = start + 0.01 + (i % 37) * 0.0071

        def fired(when: float = when) -> None:
            lateness.append(now() - when)
            if len(lateness) == 300:
                done.set()

        d = Deadline(wheel, fired)
        d.arm(when)
        deadlines.append(d)
    assert wheel.pending() <= 7  # 300 deadlines over ~0.27 s share a handful of timers
    run_until(loop, done)
    assert min(lateness) >= 0, f"fired {-min(lateness) * 1e3:.3f} ms early"
    assert wheel.pending() == 0 and not any(d.linked for d in deadlines)


def test_moving_disarming_and_closing_deadlines_from_inside_a_firing_tick(loop):
    wheel = TimerWheel(loop)
    done = asyncio.Event()
    fired: list[str] = []
    when = inside_one_tick(0.1)
    later = when + 0.2
    ds: dict[str, Deadline] = {}

    def first() -> None:
        fired.append("first")
        ds["closed"].close()
        ds["disarmed"].disarm()
        ds["pushed"].arm(later)
        if fired.count("first") == 1:
            ds["first"].arm(when + 0.1)  # re-arms itself once

    def note(name: str) -> None:
        fired.append(name)
        if name == "pushed":
            assert now() >= later
            done.set()

    for name in ("closed", "disarmed", "pushed", "plain"):
        ds[name] = Deadline(wheel, lambda name=name: note(name))
        ds[name].arm(when)
    ds["first"] = Deadline(wheel, first)
    ds["first"].arm(when)  # linked last: the head of its tick, so it fires first
    run_until(loop, done)
    assert sorted(fired) == ["first", "first", "plain", "pushed"], fired
    assert wheel.pending() == 0
    assert not any(d.linked for d in ds.values())


def test_a_failing_handler_does_not_silence_the_other_timeouts_of_its_tick(loop):
    wheel = TimerWheel(loop)
    done = asyncio.Event()
    reported: list[dict] = []
    loop.set_exception_handler(lambda lp, context: reported.append(context))

    def broken() -> None:
        raise RuntimeError("bug in a timeout path")

    other = Deadline(wheel, done.set)
    failing = Deadline(wheel, broken)
    when = inside_one_tick(0.1)
    other.arm(when)
    failing.arm(when)  # the head of the tick: fires before `other`
    run_until(loop, done)
    assert [type(c.get("exception")) for c in reported] == [RuntimeError]
    assert "timeout handler failed" in reported[0]["message"]
    assert not other.linked and wheel.pending() == 0


@pytest.mark.parametrize("when", [1e18, math.inf, math.nan])
def test_an_absurd_deadline_arms_a_far_timer_not_a_busy_loop(loop, when):
    """A deadline beyond any clock (a hand-edited state file's max_hold) is parked
    ages ahead; before the cap its tick overflowed and the loop spun."""
    wheel = TimerWheel(loop)
    fired: list[int] = []
    d = Deadline(wheel, lambda: fired.append(1))
    d.arm(when)
    assert wheel.next_due() > now() + 1000 * YEAR
    d.arm(now() + 0.01)  # moving it earlier still works
    assert wheel.next_due() < now() + 1
    d.close()
    assert wheel.pending() == 0 and not fired
