"""The scale-out benchmark (``benchmarks/scale.py --quick``) runs 1 and 2 worker processes end to end.

No timing and no target is asserted: they depend on the machine and on what
else runs on it (the targets are printed as ``met``/``missed``). The script
fails by itself when an output is wrong or an instance does not finish in time.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchfigures import figures as parse_figures
from benchfigures import run_quick

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"

#: figures every (workload, process count) prints
PER_RUN = [
    "s",
    "steps",
    "conflicts",
    "conflicts_per_step",
    "step_retries",
    "step_p99_ms",
    "storage_calls_per_activity",
    "processes_with_steps",
    "cpu_workers_s",
]
TARGETS = [
    "target_seq_p2_not_slower",
    "target_fan_p2_not_slower",
    "target_fan_p1_conflicts_per_step",
    "target_fan_p2_conflicts_per_step",
]


def test_quick_scale_benchmark_passes_and_prints_every_figure() -> None:
    proc = run_quick(SCRIPT, timeout=240)
    report = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "PASS", report
    targets = dict(line.split(": ", 1) for line in lines if line.startswith("target_"))
    assert set(targets) == set(TARGETS), report
    assert set(targets.values()) <= {"met", "missed"}, report
    found = parse_figures("\n".join(line for line in lines[:-1] if not line.startswith("target_")))
    expected = [f"{w}_p{p}_{name}" for w in ("seq", "fan") for p in (1, 2) for name in PER_RUN]
    expected += [f"seq_p{p}_instances_per_s" for p in (1, 2)] + [f"fan_p{p}_activities_per_s" for p in (1, 2)]
    expected += ["seq_p2_vs_p1", "fan_p2_vs_p1"]
    missing = [name for name in expected if name not in found]
    assert not missing, f"missing figures {missing}\n{report}"
    for name in expected:
        assert math.isfinite(found[name]) and found[name] >= 0, (name, found[name])
    for w in ("seq", "fan"):
        for p in (1, 2):
            assert found[f"{w}_p{p}_steps"] > 0 and found[f"{w}_p{p}_processes_with_steps"] >= 1, report
        assert found[f"{w}_p1_conflicts"] == 0, report  # one process never conflicts with itself
    # 10 sequences of 5 activities: a start step and one step per result each, at least
    assert found["seq_p1_steps"] >= 60, report
