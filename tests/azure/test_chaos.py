"""The chaos soak runs end to end in its quick mode (``benchmarks/chaos.py --quick``) and passes.

42 mixed instances on 3 worker processes over 40 s while a random worker is SIGKILLed every
5-15 s and Azurite is stopped (SIGTERM) and restarted once: every output right, the counter
entities exact, no duplicated completion in any history, no inbox or outbox row left, and the
workers ran this checkout's ``durable_ext``. Duplicate activity runs and recovery times depend on
where the kills land: they are printed, not asserted (the script traces each duplicate to a kill).
"""

from __future__ import annotations

from benchfigures import ROOT, run_passing

SCRIPT = ROOT / "benchmarks" / "chaos.py"


def test_quick_chaos_soak() -> None:
    # the script bounds every wait itself (about 75 s typical); this only stops a hung run
    found, report = run_passing(SCRIPT, "--quick", timeout=600)
    assert found["instances"] == 42 and found["children"] == 12, report
    assert found["kills"] >= 1 and found["storage_stops"] == found["storage_clean_stops"] == 1, report
    assert found["wrong_outputs"] == 0 and found["history_problems"] == 0, report
    assert found["entity_signal_problems"] == 0 and found["inbox_outbox_rows_left"] == 0, report
    assert found["activity_runs"] >= found["activity_keys"], report
    assert found["worker_processes_on_this_checkout"] == found["worker_processes"], report
