"""Burrow's evaluation rules on synthetic offset histories (no broker): one case per rule, plus the ETA."""
from __future__ import annotations

from crmsync import burrow
from crmsync.burrow import OK, REWIND, STALL, STOP, WARN, PartitionWindow, Sample


def window(history: list[tuple[int, int]], interval: float = 5.0) -> PartitionWindow:
    """(committed, end) pairs, one sample every `interval` seconds."""
    w = PartitionWindow()
    for n, (committed, end) in enumerate(history):
        w.add(Sample(1000.0 + n * interval, committed, end))
    return w


def test_a_consumer_that_caught_up_once_in_the_window_is_ok_even_with_lag_now():
    history = [(100, 100)] + [(100 + 10 * n, 150 + 20 * n) for n in range(1, 10)]
    assert burrow.evaluate(window(history)).status == OK


def test_lag_shrinking_while_offsets_move_is_ok_however_large():
    history = [(1000 * n, 100_000) for n in range(10)]  # 90,000 behind, but catching up
    verdict = burrow.evaluate(window(history))
    assert verdict.status == OK and verdict.lag == 91_000
    assert verdict.consume_rate == 200.0  # 9,000 messages in 45 s
    assert verdict.eta_seconds == 91_000 / 200.0


def test_offsets_moving_but_lag_never_shrinking_is_warn():
    history = [(100 * n, 500 + 150 * n) for n in range(10)]
    verdict = burrow.evaluate(window(history))
    assert verdict.status == WARN and verdict.produce_rate > verdict.consume_rate


def test_offsets_frozen_with_members_is_stall_and_without_members_is_stop():
    history = [(40, 50 + n) for n in range(10)]
    assert burrow.evaluate(window(history), group_state="stable").status == STALL
    assert burrow.evaluate(window(history), group_state="empty").status == STOP
    assert burrow.evaluate(window(history)).eta_seconds is None  # nothing consumed: no ETA, not a guess


def test_offsets_going_backwards_is_rewind():
    history = [(100, 200), (110, 200), (120, 200), (60, 200), (70, 200)]
    assert burrow.evaluate(window(history)).status == REWIND


def test_a_group_that_never_committed_has_its_whole_partition_as_lag():
    history = [(-1, 30 + n) for n in range(10)]
    verdict = burrow.evaluate(window(history), group_state="empty")
    assert verdict.lag == 39 and verdict.status == STOP  # not "lag 0" (redpanda-data/console#788)


def test_window_keeps_the_newest_samples_and_says_when_it_is_complete():
    w = window([(n, n + 5) for n in range(25)])
    assert len(w.samples) == burrow.WINDOW and w.samples[0].committed == 15
    assert burrow.evaluate(w).complete
    assert not burrow.evaluate(window([(1, 5), (2, 5)])).complete


def test_group_status_is_its_worst_partition():
    assert burrow.worst([OK, WARN, OK]) == WARN
    assert burrow.worst([WARN, STOP, STALL]) == STOP
    assert burrow.worst([]) == OK


def test_eta_without_lag_is_zero():
    assert burrow.eta(0, None) == 0.0 and burrow.eta(0, 0.0) == 0.0
