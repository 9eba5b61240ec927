"""The benchmark's merge of open-loop rounds, and its summary of server waits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from run import median_steps, wait_summary


def ladder(*p99s: float, ok: bool = True) -> dict[str, Any]:
    """Return an open-loop result with one step per p99, at 500, 1,000, ..."""
    steps = [
        {"rate": 500 * (n + 1), "latency_ms": {"p99": p99}}
        for n, p99 in enumerate(p99s)
    ]
    return {"ok": ok, "errors": [] if ok else ["lost"], "steps": steps}


def test_median_steps_single_round() -> None:
    result = ladder(3.0, 4.0)
    assert median_steps([result]) is result


def test_median_steps_picks_middle_round() -> None:
    merged = median_steps([ladder(9.0, 4.0), ladder(3.0, 8.0), ladder(5.0, 6.0)])
    assert [step["latency_ms"]["p99"] for step in merged["steps"]] == [5.0, 6.0]
    assert merged["p99_ms_rounds"] == {"500": [9.0, 3.0, 5.0], "1000": [4.0, 8.0, 6.0]}


def test_median_steps_skipped_rate_is_slowest() -> None:
    # Two rounds of three bent before 1,000 msg/s, so the median has no step.
    merged = median_steps([ladder(3.0), ladder(4.0, 7.0), ladder(5.0)])
    assert [step["rate"] for step in merged["steps"]] == [500]
    assert merged["p99_ms_rounds"]["1000"] == [None, 7.0, None]


def test_median_steps_keeps_failures() -> None:
    merged = median_steps([ladder(3.0), ladder(4.0, ok=False), ladder(5.0)])
    assert merged["ok"] is False
    assert merged["errors"] == ["lost"]


def test_wait_summary_counts_what_a_step_added() -> None:
    before = {"loop_lag": {"0.01": 90, "0.025": 95, "0.05": 100, "+Inf": 100}}
    # The step added 200 samples: 150 up to 10 ms, 40 more up to 25 ms, and
    # 10 between 25 and 50 ms.
    after = {"loop_lag": {"0.01": 240, "0.025": 285, "0.05": 300, "+Inf": 300}}
    assert wait_summary(before, after) == {
        "loop_lag": {"count": 200, "p99_under_ms": 50.0, "over_25_ms": 10}
    }


def test_wait_summary_above_the_last_bound() -> None:
    before = {"message_write": {"0.01": 0, "0.025": 0, "+Inf": 0}}
    after = {"message_write": {"0.01": 5, "0.025": 5, "+Inf": 100}}
    assert wait_summary(before, after) == {
        "message_write": {"count": 100, "p99_under_ms": None, "over_25_ms": 95}
    }


def test_wait_summary_after_failed_scrape() -> None:
    # A failed scrape gives no counts: the step has no figures, not zeros.
    after = {"loop_lag": {"0.025": 5, "+Inf": 5}}
    assert wait_summary({}, after) == {}
    assert wait_summary(after, {}) == {}
