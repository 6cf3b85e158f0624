"""Run a benchmark script (its ``--quick`` mode, or given arguments) and read its ``name: value`` figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS_HOST = ROOT.parent / "shared" / "functions-host"

#: for tests that run an app under ../shared/functions-host (the real Python worker)
needs_functions_host = pytest.mark.skipif(
    not (FUNCTIONS_HOST / "start").is_file(),
    reason=f"no {FUNCTIONS_HOST / 'start'}: functions-host (shared/, beside the repository) is not there",
)


def figures(output: str) -> dict[str, float]:
    """The ``name: value`` lines of the output as numbers (comment lines skipped)."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition(": ")
        assert sep, f"not a 'name: value' line: {line!r}"
        found[name] = float(value)
    return found


def run_quick(script: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT --quick`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=script.parents[1],
    )


def run_passing(script: Path, *args: str, timeout: float) -> tuple[dict[str, float], str]:
    """Run ``python SCRIPT ARGS``; it must exit 0 with ``PASS`` last. Its figures and a report for asserts."""
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    report = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "PASS", report
    return figures("\n".join(lines[:-1])), report
