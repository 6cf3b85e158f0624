"""Azurite, the Azure Storage emulator, as a managed child process.

Installs the pinned npm package on first use (``azurite/package.json`` of
this repository, or a copy of the same pin in a per-user cache when the
package is installed elsewhere), starts it on free loopback ports with its
own data folder, waits until every service answers, and stops only the
process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

AZURITE_VERSION = "3.37.0"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEFAULT_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}


class AzuriteError(RuntimeError):
    """Azurite could not be installed or started; the message says what to check."""


def _repo_dir() -> Path | None:
    candidate = Path(__file__).resolve().parents[2] / "azurite"
    return candidate if (candidate / "package.json").is_file() else None


def install_dir() -> Path:
    """Where the Azurite npm package lives (installed there on first use)."""
    override = os.environ.get("DURABLE_EXT_AZURITE_DIR")
    if override:
        return Path(override)
    repo = _repo_dir()
    if repo is not None:
        return repo
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "durable_ext" / "azurite"
    return cache


def ensure_installed() -> Path:
    """Install the pinned Azurite with npm if needed; return its executable."""
    folder = install_dir()
    exe = folder / "node_modules" / ".bin" / "azurite"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None:
        raise AzuriteError("Azurite needs Node.js and npm on PATH (https://nodejs.org)")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "package.json"
    if not manifest.exists():
        manifest.write_text(
            json.dumps(
                {
                    "name": "durable-ext-azurite",
                    "private": True,
                    "dependencies": {"azurite": AZURITE_VERSION},
                },
                indent=2,
            )
        )
    command = [npm, "ci" if (folder / "package-lock.json").exists() else "install"]
    command += ["--no-audit", "--no-fund", "--loglevel=error"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not exe.exists():
        raise AzuriteError(f"installing Azurite with npm in {folder} failed:\n{done.stderr[-2000:]}")
    return exe


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def connection_string(host: str, ports: dict[str, int]) -> str:
    """The storage connection string of an Azurite on ``host`` with these ports."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{ports['blob']}/{ACCOUNT};"
        f"QueueEndpoint=http://{host}:{ports['queue']}/{ACCOUNT};"
        f"TableEndpoint=http://{host}:{ports['table']}/{ACCOUNT};"
    )


class Azurite:
    """One Azurite process: ``with Azurite() as az: az.connection_string``.

    ``data_dir`` keeps its data (a temporary folder, removed on stop, when not
    given); ``ports`` defaults to three free ports. ``restart()`` stops and
    starts it on the same ports and data, as a crashed emulator would come back.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        in_memory: bool = False,
    ) -> None:
        """``in_memory``: keep the data in memory only (no save to disk every few seconds,
        which stalls the emulator once it holds a few hundred thousand rows)."""
        self.in_memory = in_memory
        self.host = host
        self.ports = dict(ports) if ports else {name: free_port(host) for name in DEFAULT_PORTS}
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="azurite-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._log: object = None
        self.stop_grace = 2.0

    @property
    def connection_string(self) -> str:
        """Connection string for the SDK clients."""
        return connection_string(self.host, self.ports)

    def start(self, timeout: float = 60.0) -> Azurite:
        """Install if needed, start, and wait until blob, queue and table answer."""
        exe = ensure_installed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "azurite.log"
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        command = [
            str(exe),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableProductStyleUrl",
            *([] if self.in_memory else ["--location", str(self.data_dir)]),
            "--blobHost", self.host, "--blobPort", str(self.ports["blob"]),
            "--queueHost", self.host, "--queuePort", str(self.ports["queue"]),
            "--tableHost", self.host, "--tablePort", str(self.ports["table"]),
            *(["--inMemoryPersistence"] if self.in_memory else []),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not all(port_open(self.host, p) for p in self.ports.values()):
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise AzuriteError(f"Azurite exited with code {self.process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop(remove_data=False)
                raise AzuriteError(f"Azurite did not answer on {self.ports} within {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self, remove_data: bool | None = None) -> None:
        """Stop the process this object started (by its pid) and close its log."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # SIGTERM makes Azurite flush its data and close; it then waits for clients'
            # keep-alive connections to end, which can take long: kill it after the flush.
            process.terminate()
            try:
                process.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        if remove_data if remove_data is not None else self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """Kill the emulator abruptly (SIGKILL), keeping its data for a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, timeout: float = 60.0) -> Azurite:
        """Stop (keeping data) and start again on the same ports."""
        self.stop(remove_data=False)
        return self.start(timeout)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
