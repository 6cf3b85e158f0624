"""The Azure Storage benchmark script runs end to end on Azurite and prints its figures.

No timing is asserted: the figures depend on the machine. The script itself
exits non-zero when an instance does not complete with the right output.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchfigures import figures as parse_figures
from benchfigures import run_quick

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "azure.py"

#: Figures every run prints, whatever the platform.
FIGURES = [
    "sequential_activities_per_s",
    "fanout_activities_per_s",
    "instances_per_s",
    "storage_ops_per_activity",
    "storage_ops_per_activity_table",
    "storage_ops_per_activity_queue",
    "storage_ops_per_activity_blob",
    "entity_ops_per_s",
    "entity_storage_ops_per_op",
    "idle_storage_calls_per_min",
]


def test_quick_benchmark_prints_every_figure() -> None:
    proc = run_quick(SCRIPT, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    figures = parse_figures(proc.stdout)
    missing = [name for name in FIGURES if name not in figures]
    assert not missing, f"missing figures {missing} in:\n{proc.stdout}"
    for name in FIGURES:
        assert math.isfinite(figures[name]) and figures[name] >= 0, (name, figures[name])
    targets = [line for line in proc.stdout.splitlines() if line.startswith("# target ")]
    assert len(targets) == 6, proc.stdout
