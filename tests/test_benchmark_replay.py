"""The replay benchmark script runs end to end and prints its figures (no timing asserts)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from benchfigures import figures as parse_figures
from benchfigures import run_quick

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "replay.py"

#: Figures ``--quick`` prints in every environment (sizes 500 / 200).
ALWAYS = [
    "sequential_500_events",
    "sequential_500_durable_ext_s",
    "sequential_500_durable_ext_us_per_event",
    "fanout_200_events",
    "fanout_200_durable_ext_s",
    "fanout_200_durable_ext_us_per_event",
    "cached_step_at_10_us",
    "cached_step_at_500_us",
    "cached_steps_total",
    "cached_steps_replays",
    "cached_steps_cache_hits",
]

#: Figures printed only when the official SDK is importable.
OFFICIAL = [
    f"{shape}_{suffix}"
    for shape in ("sequential_500", "fanout_200")
    for suffix in ("official_s", "official_us_per_event", "ratio")
]


def test_quick_benchmark_prints_every_figure() -> None:
    proc = run_quick(SCRIPT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = parse_figures(proc.stdout)
    expected = list(ALWAYS)
    if importlib.util.find_spec("azure.durable_functions") is not None:
        expected += OFFICIAL
    missing = [name for name in expected if name not in figures]
    assert not missing, f"missing figures {missing} in:\n{proc.stdout}"
    assert figures["sequential_500_events"] == 4 * 500 + 2
    assert figures["cached_steps_replays"] == 1
