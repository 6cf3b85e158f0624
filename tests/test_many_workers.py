"""Two and four worker processes under the real Python worker share one hub (``benchmarks/many_workers.py``).

200 mixed instances each time, started over HTTP, with Azure's queue polling
and default durable settings: every output right, entities exact, no
duplicated completion, nothing left on the queues, no failed invocation, and
the repair sweep rescued nothing: with its function disabled (2 processes)
only the normal path can finish the work; with it on (4), it runs during and
once more after the load and must log no repair, so there too the normal
path alone finished everything (a 4-process run with the sweep off adds no
check this one lacks, and 25 s to the suite).
"""

from __future__ import annotations

import pytest
from benchfigures import ROOT, needs_functions_host, run_passing

SCRIPT = ROOT / "benchmarks" / "many_workers.py"


@needs_functions_host
@pytest.mark.parametrize(("workers", "sweep"), [(2, "off"), (4, "on")])
def test_mixed_load_on_many_worker_processes(workers: int, sweep: str) -> None:
    args = ["--workers", str(workers), "--instances", "200", "--sweep", sweep]
    found, report = run_passing(SCRIPT, *args, timeout=1200)  # the first run installs the host's venv
    assert found["instances"] == 200, report
    assert found["history_problems"] == 0 and found["failed_invocations"] == 0, report
    assert found["repair_lines"] == 0, report  # nothing failed, so the sweep may rescue nothing
    assert found["queue_messages_left"] == found["pending_timer_messages"], report
    assert found["workers_with_steps"] == workers and found["workers_with_activities"] >= 2, report
    if sweep == "on":
        assert found["sweeps_after_load"] >= 1, report  # it ran once the load was done, and found nothing
    else:
        assert found["sweeps"] == 0, report  # nothing but the normal path finished the work
