"""The worker's reconnect backoff: full jitter under a doubling ceiling (no sockets)."""

from __future__ import annotations

import random
import statistics

from packmule.worker.daemon import MAX_BACKOFF, MIN_BACKOFF, reconnect_delay


def ceiling(retry: int) -> float:
    return min(MAX_BACKOFF, MIN_BACKOFF * 2**retry)


def test_each_wait_lies_under_a_ceiling_that_doubles_up_to_the_cap() -> None:
    rng = random.Random(7)
    for retry in range(12):
        waits = [reconnect_delay(retry, rng) for _ in range(2000)]
        assert all(0.0 <= w <= ceiling(retry) for w in waits)
        # Spread over the whole window, not bunched at its top (a fixed wait) or bottom.
        assert max(waits) > 0.95 * ceiling(retry)
        assert min(waits) < 0.05 * ceiling(retry)
        assert abs(statistics.mean(waits) - ceiling(retry) / 2) < 0.05 * ceiling(retry)
    assert ceiling(0) == MIN_BACKOFF == 1.0
    assert ceiling(20) == MAX_BACKOFF == 60.0


def test_the_schedule_is_a_pure_function_of_the_retry_and_the_generator() -> None:
    first = [reconnect_delay(r, random.Random(42)) for r in range(10)]
    again = [reconnect_delay(r, random.Random(42)) for r in range(10)]
    assert first == again
    other = [reconnect_delay(r, random.Random(43)) for r in range(10)]
    assert first != other


def test_a_huge_retry_count_stays_at_the_cap() -> None:
    rng = random.Random(1)
    assert all(0.0 <= reconnect_delay(r, rng) <= MAX_BACKOFF for r in (64, 10**6, 10**18))


def test_workers_that_lost_their_manager_together_come_back_spread_out() -> None:
    """A restarted manager must not see all its workers at one instant: 2,000
    workers (each with its own generator, as each worker process has) retry
    across the whole first window, about evenly."""
    workers = [random.Random(seed) for seed in range(2000)]
    for retry in (0, 3):
        arrivals = [reconnect_delay(retry, rng) for rng in workers]
        window = ceiling(retry)
        buckets = [0] * 100  # a hundredth of the window each: 20 workers if even
        for t in arrivals:
            buckets[min(99, int(t / window * 100))] += 1
        assert max(buckets) < 45, buckets
        assert min(buckets) > 3, buckets
