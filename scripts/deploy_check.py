"""Deploy the samples as users deploy them, run them under functions-host, drive them over HTTP.

Run through ``./scripts/deploy_check`` (which sets up ``.venv`` first). The steps are the README's
"Deploying to Azure" recipe:

1. ``python -m build`` the sdist and, from it, the wheel (into a temporary folder);
2. lay out the app folder as it is zipped for deployment: ``function_app.py`` and ``host.json``
   from ``samples/``, the wheel in ``wheels/``, and a ``requirements.txt`` that installs
   ``durable-ext`` from it (``--find-links ./wheels``, resolved by pip relative to the
   requirements file, so any working directory does); plus a ``local.settings.json`` with the
   storage connection, as for any local run (it is not deployed);
3. start a private Azurite on free ports (``durable_ext.host.azurite.Azurite``), unless
   ``--storage`` names a storage connection string to use instead;
4. run ``../shared/functions-host/start APP --workers N --port P`` with a fresh
   ``FUNCTIONS_HOST_HOME`` and without ``--project``: the host's venv gets the worker's packages
   and whatever the app's ``requirements.txt`` brings, nothing else;
5. wait for ``/admin/host/status`` to say Running, run ``hello_sequence`` (three times),
   ``fan_out_fan_in`` (input 20) and the ``counter`` entity over HTTP;
6. check that ``durable_ext`` was imported from that venv's site-packages, byte for byte the
   wheel's files, and that the workers ran with no ``PYTHONPATH`` and the app folder as cwd;
7. stop the host with SIGTERM (it must exit 0) and Azurite.

The last line printed is ``deploy check: PASS ...`` or ``deploy check: FAIL <reason>``; the exit
code is 0 or 1. Every wait has a timeout. The temporary folder is removed after a PASS (unless
``--keep``) and kept, with every log, after a FAIL.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks.fhost; not benchmarks/, whose azure.py would shadow ``azure``

from benchmarks import fhost  # noqa: E402
from benchmarks.fhost import HOST_DIR, Host, HostExited, Http  # noqa: E402

# the test harness's Azurite helper, from the checkout (not part of the deployed app)
from durable_ext.host.azurite import Azurite, AzuriteError, free_port, install_dir  # noqa: E402

HELLO_OUTPUT = ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
FAN_OUT_N = 20
FAN_OUT_OUTPUT = sum(k * k for k in range(1, FAN_OUT_N + 1))  # 2870
POLL_S = 0.2


class CheckFailed(Exception):
    """One step failed; the message is the reason printed after ``deploy check: FAIL``."""


def say(text: str) -> None:
    print(f"deploy check: {text}", flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


def run_bounded(command: list[str], *, timeout: float, log: Path, what: str, **kwargs: Any) -> None:
    """Run ``command`` in a session of its own, output to ``log``; on timeout stop its process group."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kwargs,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process, grace=5)
            raise CheckFailed(f"{what} did not finish within {timeout:.0f}s (log: {log})") from None
    if code != 0:
        print(tail(log), flush=True)
        raise CheckFailed(f"{what} failed with exit code {code} (log: {log})")


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL, the process group led by ``process`` (which we started)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# ---------------------------------------------------------------------------- 1. the wheel
def build_wheel(work: Path) -> Path:
    try:
        import build  # noqa: F401  - the build frontend, from the dev extra
    except ImportError:
        say("installing 'build' into the repo's .venv")
        run_bounded(
            [sys.executable, "-m", "pip", "install", "-q", "build>=1.2"],
            timeout=300,
            log=work / "build.log",
            what="pip install build",
        )
    dist = work / "dist"
    # sdist first, then the wheel from the unpacked sdist: no stale build/ folder of the
    # checkout can slip into the wheel, and the sdist is checked to be complete too.
    run_bounded(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
        timeout=300,
        log=work / "build.log",
        what="python -m build",
    )
    wheels = sorted(dist.glob("durable_ext-*-py3-none-any.whl"))
    if len(wheels) != 1:
        made = [p.name for p in dist.iterdir()]
        raise CheckFailed(f"python -m build made {made}, not one pure-Python wheel")
    return wheels[0]


# ---------------------------------------------------------------------------- 2. the app folder
def lay_out_app(work: Path, wheel: Path, storage: str) -> tuple[Path, str]:
    """The folder as it is zipped for deployment (plus local.settings.json); returns it and the version."""
    app = work / "app"
    (app / "wheels").mkdir(parents=True)
    shutil.copy2(REPO / "samples" / "function_app.py", app / "function_app.py")
    shutil.copy2(REPO / "samples" / "host.json", app / "host.json")
    shutil.copy2(wheel, app / "wheels" / wheel.name)
    version = wheel.name.split("-")[1]
    (app / "requirements.txt").write_text(f"--find-links ./wheels\ndurable-ext=={version}\n")
    settings = {
        "IsEncrypted": False,
        "Values": {"FUNCTIONS_WORKER_RUNTIME": "python", "AzureWebJobsStorage": storage},
    }
    (app / "local.settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    if any((app / name).exists() for name in ("durable_ext", ".python_packages")):
        raise CheckFailed("the app folder holds a copy of durable_ext")
    return app, version


# ---------------------------------------------------------------------------- 3. Azurite
class Storage:
    """A private Azurite (started and stopped here), or a connection string given with --storage."""

    def __init__(self, work: Path, given: str | None) -> None:
        self.work, self.given = work, given
        self.azurite: Azurite | None = None

    def start(self) -> str:
        if self.given:
            say("using the storage account given with --storage")
            return self.given
        if not (install_dir() / "node_modules" / ".bin" / "azurite").exists():
            say(f"installing Azurite with npm into {install_dir()} (first use)")
            # in a process group of its own, so that a timeout stops npm too
            run_bounded(
                [sys.executable, "-c", "import durable_ext.host.azurite as a; a.ensure_installed()"],
                timeout=600,
                log=self.work / "azurite-install.log",
                what="installing Azurite",
            )

        self.azurite = Azurite(self.work / "azurite")
        try:
            self.azurite.start(timeout=90)
        except AzuriteError as exc:
            raise CheckFailed(f"Azurite did not start: {exc}") from None
        pid = self.azurite.process.pid if self.azurite.process else None
        say(f"Azurite on 127.0.0.1 ports {self.azurite.ports} (pid {pid})")
        return str(self.azurite.connection_string)

    def stop(self) -> None:
        if self.azurite is not None:
            self.azurite.stop(remove_data=False)
            self.azurite = None


# ---------------------------------------------------------------------------- 4. the host
def make_host(work: Path, app: Path, storage: str, workers: int, port: int, python: str | None) -> Host:
    """The host of ``app`` without ``--project``, with a fresh ``FUNCTIONS_HOST_HOME`` in ``work``."""
    home = work / "functions-host-home"  # fresh: the venv holds only what is installed here
    hub = f"DeployCheck{int(time.time())}{random.randrange(10**6)}"
    # the repo's .venv must not leak in: the host runs with the venv it creates
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    extra = {"FUNCTIONS_HOST_HOME": str(home), "PATH": path}
    if python:
        extra["FUNCTIONS_HOST_PYTHON"] = python
    # Development: what the host defaults AZURE_FUNCTIONS_ENVIRONMENT to, as Core Tools runs
    host = Host(app, workers, port, fhost.host_env(storage, hub, "Development", extra), work)
    say(f"$ FUNCTIONS_HOST_HOME={home} {' '.join(host.command())}   (hub {hub})")
    return host


def startup_reason(host: Host) -> str:
    """The host's last words; the tail of pip's log too when a pip install failed."""
    reason = host.last_words()
    if "pip install" in reason:
        print(tail(Path(host.env["FUNCTIONS_HOST_HOME"]) / "pip.log", 30), flush=True)
    return reason


# ---------------------------------------------------------------------------- 5. driving it
def call(client: Http, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON body or text); 0 when nothing answers. Non-2xx answers are returned."""
    try:
        answer = client.request(method, url, body, timeout=15.0)
    except (OSError, http.client.HTTPException):
        return 0, None
    try:
        return answer.status, answer.json()
    except ValueError:
        return answer.status, answer.body.decode("utf-8", "replace")


def run_orchestration(host: Host, name: str, body: Any, expected: Any, deadline: float) -> str:
    client = Http("127.0.0.1", host.port)
    started = time.monotonic()
    status, answer = call(client, "POST", f"{host.api}/orchestrators/{name}", body)
    if status != 202 or not isinstance(answer, dict) or "statusQueryGetUri" not in answer:
        raise CheckFailed(f"POST /api/orchestrators/{name} answered HTTP {status}: {str(answer)[:300]}")
    instance, url = answer.get("id"), answer["statusQueryGetUri"]
    last: Any = None
    while time.monotonic() - started < deadline:
        status, last = call(client, "GET", url)
        if isinstance(last, dict) and last.get("runtimeStatus") in ("Completed", "Failed", "Terminated"):
            break
        time.sleep(POLL_S)
    elapsed = time.monotonic() - started
    runtime = last.get("runtimeStatus") if isinstance(last, dict) else f"HTTP {status}"
    if runtime != "Completed":
        raise CheckFailed(f"{name} {instance} is {runtime} after {elapsed:.1f}s: {str(last)[:300]}")
    if last.get("output") != expected:
        raise CheckFailed(f"{name} {instance} output {last.get('output')!r}, expected {expected!r}")
    say(f"{name} {instance}: Completed in {elapsed:.2f}s, output {json.dumps(last['output'])}")
    return f"{elapsed:.2f}s"


def run_counter(host: Host, deadline: float) -> str:
    client = Http("127.0.0.1", host.port)
    key = f"deploycheck{random.randrange(10**6)}"
    url = f"{host.api}/durabletask/entities/counter/{key}"
    started = time.monotonic()
    for amount in (5, 2):
        status, answer = call(client, "POST", f"{url}?op=add", amount)
        if status != 202:
            raise CheckFailed(f"signalling counter/{key} add {amount}: HTTP {status}: {str(answer)[:300]}")
    value: Any = None
    while time.monotonic() - started < deadline:
        status, value = call(client, "GET", url)
        if status == 200 and value == 7:
            elapsed = time.monotonic() - started
            say(f"entity counter/{key}: add 5, add 2, read 7 after {elapsed:.2f}s")
            return f"{elapsed:.2f}s"
        time.sleep(POLL_S)
    raise CheckFailed(f"counter/{key} read {value!r} (HTTP {status}) instead of 7 after {deadline:.0f}s")


# ---------------------------------------------------------------------------- 6. provenance
PROBE = r"""
import importlib.metadata, json, os, sys
import durable_ext
dist = importlib.metadata.distribution("durable_ext")
direct = dist.read_text("direct_url.json")
print(json.dumps({
    "file": os.path.realpath(durable_ext.__file__),
    "site": [os.path.realpath(p) for p in sys.path],
    "version": dist.version,
    "record": dist.read_text("RECORD"),
    "direct_url": json.loads(direct) if direct else None,
    "dist_path": os.path.realpath(str(dist.locate_file(""))),
}))
"""


def wheel_hashes(wheel: Path) -> dict[str, str]:
    """{path: sha256=...} of the wheel's own files, from the bytes themselves."""
    hashes = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("durable_ext/") and not name.endswith("/"):
                digest = hashlib.sha256(archive.read(name)).digest()
                hashes[name] = "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return hashes


def check_provenance(host: Host, app: Path, wheel: Path, version: str) -> str:
    """durable_ext, as the workers import it, is the wheel's installed copy in the fresh venv."""
    host.remember_workers()
    pids = sorted(pid for pid, began in host.worker_pids.items() if fhost.start_time(pid) == began)
    if not pids:
        raise CheckFailed("no worker process of the host found to check its environment")
    for pid in pids:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        environ = dict(item.split(b"=", 1) for item in raw if b"=" in item)
        if b"PYTHONPATH" in environ:
            raise CheckFailed(f"worker {pid} runs with PYTHONPATH={environ[b'PYTHONPATH'].decode()}")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
        if cwd != app.resolve():
            raise CheckFailed(f"worker {pid} runs in {cwd}, not the app folder")
    # The same interpreter, cwd and environment as the workers (the worker adds the app folder,
    # which holds no durable_ext, to sys.path).
    env = {k: v for k, v in host.env.items() if k != "PYTHONPATH"}
    home = Path(host.env["FUNCTIONS_HOST_HOME"])
    done = subprocess.run(
        [str(home / "venv" / "bin" / "python"), "-c", PROBE],
        cwd=str(app),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise CheckFailed(f"importing durable_ext in the host's venv failed: {done.stderr.strip()[-500:]}")
    info = json.loads(done.stdout)
    site = (home / "venv").resolve()
    module = Path(info["file"])
    if not module.is_relative_to(site) or "site-packages" not in module.parts:
        raise CheckFailed(f"durable_ext was imported from {module}, not from the site-packages of {site}")
    if module.is_relative_to(REPO):
        raise CheckFailed(f"durable_ext was imported from the source tree: {module}")
    if any(Path(p).is_relative_to(REPO) for p in info["site"]):
        raise CheckFailed(f"the checkout is on the host venv's sys.path: {info['site']}")
    if info["direct_url"] is not None:
        raise CheckFailed(f"durable_ext was installed from a direct reference: {info['direct_url']}")
    if info["version"] != version:
        raise CheckFailed(f"installed durable_ext is {info['version']}, the wheel {version}")
    installed = {row[0]: row[1] for row in csv.reader(io.StringIO(info["record"])) if row and len(row) > 1}
    expected = wheel_hashes(wheel)
    differing = sorted(name for name, digest in expected.items() if installed.get(name) != digest)
    if differing:
        raise CheckFailed(f"installed durable_ext differs from the wheel in {differing[:5]}")
    for name in expected:  # and the files on disk are the recorded ones
        data = (Path(info["dist_path"]) / name).read_bytes()
        digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if digest != expected[name]:
            raise CheckFailed(f"{name} in the host venv is not the wheel's")
    rel = module.relative_to(site)
    say(f"durable_ext {version} imported from <FUNCTIONS_HOST_HOME>/venv/{rel}")
    say(f"its {len(expected)} files there are byte for byte the wheel's")
    say(f"workers {pids}: cwd = the app folder, no PYTHONPATH")
    return f"{len(expected)} files from the wheel"


# ---------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--port", type=int, help="host HTTP port (default: a free one)")
    parser.add_argument("--storage", help="a storage connection string to use instead of a private Azurite")
    parser.add_argument("--python", help="interpreter for the host's venv (FUNCTIONS_HOST_PYTHON; 3.10-3.12)")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds for venv set-up + start")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder after a PASS")
    args = parser.parse_args()

    t0 = time.monotonic()
    if not (HOST_DIR / "start").is_file():
        say(f"FAIL {HOST_DIR / 'start'} not found (shared/ must sit beside the repo)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="deploy-check-"))
    say(f"work folder {work}")
    storage = Storage(work, args.storage)
    host: Host | None = None
    verdict = "FAIL interrupted"
    try:
        t = time.monotonic()
        wheel = build_wheel(work)
        say(f"built {wheel.name} in {time.monotonic() - t:.1f}s")

        connection = storage.start()
        app, version = lay_out_app(work, wheel, connection)
        say(f"app folder {app}: {', '.join(sorted(p.name for p in app.iterdir()))}")
        say("requirements.txt: " + " | ".join((app / "requirements.txt").read_text().splitlines()))

        port = args.port or free_port()
        host = make_host(work, app, connection, args.workers, port, args.python)
        host.start()
        try:
            ready = fhost.wait_ready(host, args.start_timeout)
        except HostExited as exc:
            startup_reason(host)
            raise CheckFailed(f"functions-host: {exc}") from None
        say(f"host Running on port {host.port} after {ready:.1f}s (venv created and installed from scratch)")

        timings = [run_orchestration(host, "hello_sequence", {}, HELLO_OUTPUT, 60) for _ in range(3)]
        fan = run_orchestration(host, "fan_out_fan_in", FAN_OUT_N, FAN_OUT_OUTPUT, 120)
        entity = run_counter(host, 60)
        provenance = check_provenance(host, app, wheel, version)

        host.stop()
        if host.exit_code != 0:
            raise CheckFailed(
                f"functions-host exited with code {host.exit_code} after SIGTERM (log: {host.out_path})"
            )
        failed = fhost.scan_log(host.log_path)["failed_invocations"]
        if failed:
            first = fhost.first_exceptions(host.log_path, limit=1)
            raise CheckFailed(f"{failed} failed invocation(s), first: {(first or ['?'])[0][:300]}")
        verdict = (
            f"PASS in {time.monotonic() - t0:.0f}s: {wheel.name} installed by requirements.txt alone "
            f"({provenance}); hello_sequence x3 [{', '.join(timings)}], fan_out_fan_in({FAN_OUT_N})="
            f"{FAN_OUT_OUTPUT} in {fan}, counter=7 in {entity}; host exit 0 (workers={args.workers})"
        )
    except CheckFailed as exc:
        verdict = f"FAIL {exc}"
    except KeyboardInterrupt:
        verdict = "FAIL interrupted"
    except Exception as exc:  # a bug here must still end with a verdict
        verdict = f"FAIL {type(exc).__name__}: {exc}"
    finally:
        if host is not None:
            host.stop()
        storage.stop()
    passed = verdict.startswith("PASS")
    if passed and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        names = f"{host.out_path.name}, {host.log_path.name}, " if host is not None else ""
        say(f"logs kept in {work} ({names}build.log, functions-host-home/pip.log)")
    say(verdict)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
