"""Helpers of the local-host tests: unique hubs and host processes started and stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from durable_ext.host.azurite import free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


def new_hub(prefix: str = "Host") -> str:
    """A task hub name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class HostProcess:
    """``python -m durable_ext start samples --port P``; only this object's pid is ever signalled."""

    def __init__(
        self,
        folder: Path,
        connection_string: str,
        hub: str,
        name: str = "host",
        *,
        app_dir: Path = SAMPLES,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        extra = env or {}
        self.port = free_port()
        self.log_path = folder / f"{name}.log"
        self.stats_path = folder / f"{name}.stats.json"
        mine = ("DURABLE_EXT_", "AzureFunctionsJobHost")
        env = {k: v for k, v in os.environ.items() if not k.startswith(mine)}
        env.update(
            {
                "AzureWebJobsStorage": connection_string,
                "AzureFunctionsJobHost__extensions__durableTask__hubName": hub,
                "AzureFunctionsJobHost__extensions__durableTask__storageProvider__partitionCount": "2",
                "AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval": (
                    "00:00:01"
                ),
                "DURABLE_EXT_STATS_FILE": str(self.stats_path),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            }
        )
        env.update(extra)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open for the child's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "durable_ext", "start", str(app_dir), "--port", str(self.port), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> HostProcess:
        """Wait until the HTTP port answers (the worker has started by then)."""
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"host exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"host not listening after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self, grace: float = 15.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM or SIGINT (a clean stop), SIGKILL after ``grace`` seconds; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode

    def stats(self) -> dict[str, Any]:
        """The host's last stats file."""
        return json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the host's log, for assertion messages."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]
