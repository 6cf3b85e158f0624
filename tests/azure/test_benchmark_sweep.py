"""The sweep benchmark runs end to end: a sweep reads as much at 20,000 history rows as at 2,000."""

from __future__ import annotations

from pathlib import Path

from benchfigures import run_passing

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep.py"


def test_sweep_cost_does_not_grow_with_history() -> None:
    found, report = run_passing(SCRIPT, "--quick", timeout=300)
    for rows in (2000, 20000):
        assert found[f"rows_{rows}_sweep_repairs"] == 0, report
        assert found[f"rows_{rows}_sweep_entities_read"] == 2, report  # the two live leases
        assert found[f"rows_{rows}_takeover_repairs"] == 20, report
    assert found["sweep_growth"] == 1.0, report
