"""The local host's pieces: routes, schedules, settings; and a custom app with queue, timer and keys."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from hostprocs import HostProcess, new_hub

from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.host.azurite import Azurite
from durable_ext.host.server import Schedule, apply_local_settings, compile_route, has_connection

# ------------------------------------------------------------------------------ routes


def match(template: str, path: str) -> dict[str, str] | None:
    m = compile_route(template)[0].match(path)
    return None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}


def test_route_templates() -> None:
    assert match("orchestrators/{functionName}", "orchestrators/hello") == {"functionName": "hello"}
    assert match("orchestrators/{functionName}", "Orchestrators/hello/") == {"functionName": "hello"}
    assert match("orchestrators/{functionName}", "orchestrators/a/b") is None
    assert match("durabletask/{*path}", "durabletask") == {}
    assert match("durabletask/{*path}", "durabletask/") == {"path": ""}
    assert match("durabletask/{*path}", "durabletask/instances/x/raiseEvent/y") == {
        "path": "instances/x/raiseEvent/y"
    }
    assert match("items/{id:int}", "items/42") == {"id": "42"}
    assert match("items/{id?}", "items") == {}
    assert match("items/{id?}", "items/7") == {"id": "7"}
    assert match("files/{name}.txt", "files/report.txt") == {"name": "report"}
    assert match("hello", "hello") == {}
    assert match("hello", "hello2") is None
    assert compile_route("a/b/{c}")[1] > compile_route("a/{b}/{c}")[1] > compile_route("{*all}")[1]


# ------------------------------------------------------------------------------ schedules


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_ncrontab_schedules() -> None:  # more in test_schedule.py
    assert Schedule("*/5 * * * * *").next_after(at("2024-05-01T12:00:03")) == at("2024-05-01T12:00:05")
    assert Schedule("0 */5 * * * *").next_after(at("2024-05-01T12:00:00")) == at("2024-05-01T12:05:00")
    # 2024-05-04 is a Saturday: weekdays 1-5 means Monday 09:30
    assert Schedule("0 30 9 * * 1-5").next_after(at("2024-05-04T10:00:00")) == at("2024-05-06T09:30:00")
    assert Schedule("0 0 0 1 1 *").next_after(at("2024-05-04T10:00:00")) == at("2025-01-01T00:00:00")
    assert Schedule("10,20 * * * * *").next_after(at("2024-05-01T12:00:15")) == at("2024-05-01T12:00:20")
    assert Schedule("00:00:10").next_after(at("2024-05-01T12:00:00")) == at("2024-05-01T12:00:10")
    assert Schedule("30 9 * * *").next_after(at("2024-05-04T10:00:00")) == at("2024-05-05T09:30:00")
    for bad in ("* * * * * * *", "61 * * * * *", "x * * * * *"):
        with pytest.raises(ValueError):
            Schedule(bad)


# ------------------------------------------------------------------------------ settings


def test_local_settings_do_not_override_the_environment(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"A": "file", "B": "file"}}))
    env = {"A": "env"}
    assert apply_local_settings(tmp_path, env) == {"B": "file"}
    assert env == {"A": "env", "B": "file"}
    assert apply_local_settings(tmp_path / "missing", {}) == {}


def test_has_connection() -> None:
    assert has_connection("Storage", {"AzureWebJobsStorage": "x"})
    assert has_connection("Storage", {"AzureWebJobsStorage__accountName": "acct"})
    assert has_connection("MyConn", {"MyConn": "x"})
    assert not has_connection("Storage", {"AzureWebJobsStorage": ""})
    assert not has_connection("Storage", {"Other": "x"})


def test_cli_reports_a_folder_without_an_app(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable_ext", "start", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AzureWebJobsStorage": "UseDevelopmentStorage=true"},
    )
    assert done.returncode == 1
    assert "no function_app.py" in done.stderr


# ------------------------------------------------------------------------------ a custom app

APP = """
import os
import azure.functions as func
import durable_ext as df

app = df.DurableApp()
OUT = os.environ["TEST_OUT"]


@app.route(route="hello/{name}", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"hi {req.route_params['name']} {req.params.get('x', '')}")


@app.route(route="open", auth_level=func.AuthLevel.ANONYMOUS)
async def open_route(req: func.HttpRequest, context) -> str:
    return context.function_name


@app.route(route="start", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start(req: func.HttpRequest, client) -> func.HttpResponse:
    return client.create_check_status_response(req, await client.start_new("echo", None, "x"))


@app.orchestration_trigger(context_name="context")
def echo(context):
    return context.get_input()


@app.queue_trigger(arg_name="msg", queue_name=os.environ["TEST_QUEUE"], connection="AzureWebJobsStorage")
def on_job(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode()
    if body == "boom":
        raise RuntimeError("boom")
    with open(os.path.join(OUT, "jobs.txt"), "a") as f:
        f.write(body + "\\n")


@app.timer_trigger(arg_name="timer", schedule="* * * * * *")
def tick(timer: func.TimerRequest) -> None:
    with open(os.path.join(OUT, "ticks.txt"), "a") as f:
        f.write("tick\\n")
"""


async def wait_for(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_custom_app_queue_timer_and_keys(azurite: Azurite, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "function_app.py").write_text(textwrap.dedent(APP))
    (app_dir / "host.json").write_text(
        json.dumps({"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 2, "batchSize": 4}}})
    )
    queue_name = f"jobs-{uuid.uuid4().hex[:8]}"
    host = HostProcess(
        tmp_path,
        azurite.connection_string,
        new_hub("Keys"),
        app_dir=app_dir,
        args=("--enforce-keys",),
        env={
            "TEST_OUT": str(tmp_path),
            "TEST_QUEUE": queue_name,
            "DURABLE_EXT_FUNCTION_KEY": "fkey",
            "DURABLE_EXT_MASTER_KEY": "mkey",
        },
    )
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    try:
        host.wait_ready()
        async with aiohttp.ClientSession() as http:
            base = f"{host.base}/api"
            async with http.get(f"{base}/hello/ann?x=1") as resp:
                assert resp.status == 401
            for key in ("fkey", "mkey"):
                async with http.get(f"{base}/hello/ann?x=1&code={key}") as resp:
                    assert (resp.status, await resp.text()) == (200, "hi ann 1")
            async with http.get(f"{base}/hello/ann", headers={"x-functions-key": "fkey"}) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/hello/ann?code=wrong") as resp:
                assert resp.status == 401
            async with http.get(f"{base}/open") as resp:
                assert (resp.status, await resp.text()) == (200, "open_route")
            async with http.get(f"{base}/durabletask/instances/") as resp:
                assert resp.status == 401  # the management API needs a key too
            async with http.post(f"{base}/start?code=fkey") as resp:
                assert resp.status == 202
                payload = await resp.json()
            assert "code=fkey" in payload["statusQueryGetUri"]
            deadline = time.monotonic() + 15
            while True:  # the check-status URL carries the key and works as given
                async with http.get(payload["statusQueryGetUri"]) as resp:
                    if resp.status == 200:
                        assert (await resp.json())["output"] == "x"
                        break
                assert resp.status == 202 and time.monotonic() < deadline
                await asyncio.sleep(0.1)

        queue = connection.queue_service().get_queue_client(queue_name)
        for body in ("one", "two", "boom"):
            await queue.send_message(body)
        jobs = tmp_path / "jobs.txt"
        await wait_for(lambda: jobs.exists() and sorted(jobs.read_text().split()) == ["one", "two"])
        poison = connection.queue_service().get_queue_client(f"{queue_name}-poison")

        async def poisoned() -> list[str]:
            try:
                return [m.content for m in await poison.peek_messages(max_messages=5)]
            except Exception:
                return []

        deadline = time.monotonic() + 20
        while await poisoned() != ["boom"]:
            assert time.monotonic() < deadline, host.log_tail()
            await asyncio.sleep(0.2)
        await wait_for(lambda: (tmp_path / "ticks.txt").exists())
    finally:
        code = host.stop()
        await connection.close()
    assert code == 0, host.log_tail()
    log = host.log_tail(100_000)
    assert "Executed 'on_job' (Succeeded" in log and "Executed 'on_job' (Failed" in log
    assert "Executed 'tick' (Succeeded" in log
    assert "Executed 'hello' (Unauthorized" in log
