"""The registered functions invoked as a stock Functions host would: runtime built from app settings.

No local host: the test plays the Functions host, receiving queue messages
itself and calling the functions ``app.get_functions()`` lists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from hostprocs import new_hub

import durable_ext as df
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.host.azurite import Azurite


def build_app(app_dir: Path) -> df.DurableApp:
    app = df.DurableApp(app_dir=app_dir)

    @app.route(route="orchestrators/{name}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
    @app.durable_client_input(client_name="client")
    async def starter(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
        iid = await client.start_new(req.route_params["name"], None, req.get_json())
        return client.create_check_status_response(req, iid)

    @app.orchestration_trigger(context_name="context")
    def chain(context: df.DurableOrchestrationContext):
        out = []
        for item in context.get_input():
            out.append((yield context.call_activity("shout", item)))
        return out

    @app.activity_trigger(input_name="text")
    def shout(text: str) -> str:
        return text.upper()

    return app


async def test_functions_run_as_the_functions_host_calls_them(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = new_hub("Az")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__durableTask__hubName", hub)
    (tmp_path / "host.json").write_text(
        json.dumps(
            {"version": "2.0", "extensions": {"durableTask": {"storageProvider": {"partitionCount": 2}}}}
        )
    )
    app = build_app(tmp_path)
    functions = {f.get_function_name(): f for f in app.get_functions()}
    bindings = {name: json.loads(f.get_function_json())["bindings"][0] for name, f in functions.items()}
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    try:
        request = func.HttpRequest(
            "POST",
            "https://myapp.example/api/orchestrators/chain",
            body=json.dumps(["a", "b"]).encode(),
            route_params={"name": "chain"},
        )
        response = await functions["starter"].get_user_function()(req=request)
        assert response.status_code == 202
        payload = json.loads(response.get_body())
        assert payload["statusQueryGetUri"].startswith("https://myapp.example/api/durabletask/instances/")

        async def pump() -> int:
            """Deliver every visible message of the hub's queues to its function, as the host would."""
            handled = 0
            for name, binding in bindings.items():
                if binding["type"] != "queueTrigger":
                    continue
                queue = connection.queue_service().get_queue_client(binding["queueName"])
                for m in await _receive(queue):
                    msg = QueueMessage(
                        id=m.id,
                        body=m.content.encode(),
                        dequeue_count=m.dequeue_count,
                        pop_receipt=m.pop_receipt,
                    )
                    await functions[name].get_user_function()(msg=msg)
                    await queue.delete_message(m.id, m.pop_receipt)
                    handled += 1
            return handled

        management = functions["durabletask_management"].get_user_function()
        status_url = payload["statusQueryGetUri"]
        deadline = time.monotonic() + 20
        while True:
            await pump()
            answer = await management(req=func.HttpRequest("GET", status_url, body=b""))
            if answer.status_code == 200:
                break
            assert answer.status_code == 202 and time.monotonic() < deadline
        assert json.loads(answer.get_body())["output"] == ["A", "B"]
        await functions["durabletask_repair"].get_user_function()(timer=None)
    finally:
        runtime = app._runtime
        if runtime is not None:
            await runtime.backend.delete_task_hub()
            await runtime.close()
        await connection.close()


async def _receive(queue: Any) -> list[Any]:
    return [m async for m in queue.receive_messages(max_messages=32, visibility_timeout=30)]
