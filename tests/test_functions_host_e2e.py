"""The samples run end to end under the real Python worker (``../shared/functions-host``).

Runs ``benchmarks/functions_host.py --quick --workers 2``: its own Azurite, a
fresh hub, two worker processes, every sample driven over HTTP. No timing is
asserted (the targets are only printed); the script fails on a wrong output,
a timeout or a host that exits. The first run creates the functions-host venv
in ``$FUNCTIONS_HOST_HOME`` (a minute or two). ``benchmarks/fhost.py``, the
host-process helper the scripts share, is checked on its own too (no host).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

from benchfigures import ROOT, needs_functions_host, run_passing

SCRIPT = ROOT / "benchmarks" / "functions_host.py"


def load_fhost() -> ModuleType:
    """``benchmarks/fhost.py`` by file (``benchmarks/`` on sys.path: its azure.py would shadow ``azure``)."""
    spec = importlib.util.spec_from_file_location("fhost_under_test", ROOT / "benchmarks" / "fhost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fhost = load_fhost()
HOST_DIR = fhost.HOST_DIR

#: Figures a passing ``--quick`` run prints (fan-out 20).
FIGURES = [
    "workers",
    "host_ready_s",
    "hello_sequence_p50_s",
    "hello_sequence_p99_s",
    "hello_sequence_max_s",
    "fan_out_fan_in_20_s",
    "approval_event_to_done_s",
    "counter_ok",
    "transfer_ok",
    "monitor_ok",
    "retry_demo_ok",
    "parent_child_ok",
    "history_ok",
    "list_ok",
    "terminate_ok",
    "purge_ok",
    "host_exit_code",
    "failed_invocations",
    "azure_http_logging_lines",
    "repair_lines",
]


def test_fhost_paths_and_command(tmp_path: Path) -> None:
    assert fhost.ROOT == ROOT
    assert ROOT.parent / "shared" / "functions-host" == HOST_DIR
    app = tmp_path / "app"
    host = fhost.Host(app, 3, 7999, {}, tmp_path, project=ROOT, name="x")
    assert host.command() == [
        str(HOST_DIR / "start"), str(app), "--project", str(ROOT), "--workers", "3", "--port", "7999",
        "--log-file", str(tmp_path / "host-x.log"),
    ]  # fmt: skip
    assert (host.out_path, host.api) == (tmp_path / "host-x.out", "http://127.0.0.1:7999/api")
    plain = fhost.Host(app, 2, 7071, {}, tmp_path)
    assert "--project" not in plain.command()
    assert (plain.log_path.name, plain.out_path.name) == ("host-w2.log", "host-w2.out")
    plain.stop()  # never started: nothing to stop
    assert plain.exit_code is None


def test_fhost_scan_log(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    log.write_text(
        "\n".join(
            [
                "[00:30:44Z]     durabletask_repair: timer */30 * * * * *",
                "[00:31:00Z] [w1] repair: re-dispatching outbox o-1 of i-1",
                "[00:31:00Z] [w2] repair: waking i-2 for inbox row r-2",
                "[00:31:00Z] [w1] WARNING:durable_ext.azure:repair: re-sent 2 timers/activities",
                "[00:31:00Z] repair: a host line, not the app's",
                "[00:31:00Z] [w1] prepare: not a repair line",
                "[00:31:01Z] Executed 'Functions.durabletask_control_00' (Failed, Id=a, Duration=3ms)",
                "Exception: ValueError: boom",
                "[00:31:02Z] Executed 'Functions.durabletask_workitems' (Succeeded, Id=b, Duration=2ms)",
                "[00:31:03Z] Executed 'Functions.http_start' (Failed, Id=c, Duration=2ms)",
                "Exception: ValueError: boom",
                "[00:31:04Z] [w1] azure.core.pipeline.policies.http_logging_policy: Request URL",
                "[00:31:30Z] Executed 'Functions.durabletask_repair' (Succeeded, Id=d, Duration=5ms)",
            ]
        )
    )
    assert fhost.scan_log(log) == {
        "failed_invocations": 2,
        "queue_trigger_invocations": 2,
        "azure_http_logging_lines": 1,
        "repair_lines": 3,
        "sweeps": 1,
    }
    assert fhost.first_exceptions(log) == ["Exception: ValueError: boom"]
    assert fhost.scan_log(tmp_path / "missing.log")["repair_lines"] == 0
    assert (fhost.percentile([3.0, 1.0, 2.0], 50), fhost.format_value(2.0), fhost.format_value(0.5)) == (
        2.0,
        "2",
        "0.5000",
    )


@needs_functions_host
def test_samples_pass_under_functions_host() -> None:
    found, report = run_passing(SCRIPT, "--quick", "--workers", "2", timeout=1200)  # first run installs
    missing = [name for name in FIGURES if name not in found]
    assert not missing, f"missing figures {missing}\n{report}"
    assert found["workers"] == 2
    assert found["host_exit_code"] == 0
    assert found["azure_http_logging_lines"] == 0  # the Azure SDK stays at Warning under the real worker
    assert found["failed_invocations"] == 0 and found["repair_lines"] == 0
    for name in FIGURES:
        assert math.isfinite(found[name]) and found[name] >= 0, (name, found[name])
    for name in FIGURES:
        if name.endswith("_ok"):
            assert found[name] == 1, (name, report)
