"""The benchmark's merge of open-loop rounds into median steps."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from run import median_steps


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
