"""The wait estimate from known figures, without sockets."""

from __future__ import annotations

from sio_server.estimate import MIN_SAMPLES, WINDOW, WaitEstimator


def test_no_data_gives_no_estimate() -> None:
    assert WaitEstimator().estimate(1, open_capacity=4) is None


def test_too_few_figures_give_no_estimate() -> None:
    few = [60.0] * (MIN_SAMPLES - 1)
    assert WaitEstimator(waits=few, durations=few).estimate(1, 4) is None


def test_durations_and_capacity_give_the_estimate() -> None:
    # Chats last 300 s on average; 3 slots free up one every 100 s.
    estimator = WaitEstimator(durations=[200.0, 400.0, 300.0, 250.0, 350.0])
    assert estimator.estimate(1, open_capacity=3) == 100
    assert estimator.estimate(4, open_capacity=3) == 400
    assert estimator.estimate(4, open_capacity=6) == 200


def test_median_wait_stands_in_without_durations() -> None:
    estimator = WaitEstimator(waits=[10.0, 20.0, 30.0, 40.0, 500.0])
    assert estimator.estimate(1, open_capacity=2) == 30
    assert estimator.estimate(9, open_capacity=2) == 30


def test_no_ready_agent_gives_no_estimate() -> None:
    estimator = WaitEstimator(durations=[60.0] * MIN_SAMPLES)
    assert estimator.estimate(1, open_capacity=0) is None


def test_not_queued_gives_no_estimate() -> None:
    estimator = WaitEstimator(durations=[60.0] * MIN_SAMPLES)
    assert estimator.estimate(0, open_capacity=1) is None


def test_only_the_latest_figures_count() -> None:
    estimator = WaitEstimator(durations=[1000.0] * WINDOW)
    for _ in range(WINDOW):
        estimator.record_duration(10.0)
    assert estimator.estimate(1, open_capacity=1) == 10


def test_negative_figures_are_ignored() -> None:
    estimator = WaitEstimator(durations=[-5.0] * MIN_SAMPLES)
    assert estimator.estimate(1, open_capacity=1) is None
