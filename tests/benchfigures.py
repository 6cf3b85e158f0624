"""Run a benchmark script's ``--quick`` mode and read its ``name: value`` figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
