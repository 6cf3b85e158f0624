"""df.Blueprint: durable functions defined apart from the app and registered into it."""

from __future__ import annotations

import azure.functions as func
import pytest

import durable_ext as df
from durable_ext.testing import DurableTestEnv

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def bp_sequence(context: df.DurableOrchestrationContext):
    """Two activity calls from a blueprint."""
    first = yield context.call_activity("bp_double", 2)
    return (yield context.call_activity("bp_double", first))


@bp.activity_trigger(input_name="n")
def bp_double(n: int) -> int:
    """Double a number."""
    return n * 2


@bp.route(route="bp/start", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def bp_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """A starter defined in the blueprint."""
    instance_id = await client.start_new("bp_sequence")
    return client.create_check_status_response(req, instance_id)


def test_blueprint_exports_and_registers() -> None:
    app = df.DFApp()
    assert app.registry.find("orchestrator", "bp_sequence") is None
    app.register_functions(bp)
    assert app.registry.find("orchestrator", "bp_sequence") is not None
    assert app.registry.find("activity", "bp_double") is not None
    names = {f.get_function_name() for f in app.get_functions()}
    assert "bp_start" in names and "durabletask_management" in names


async def test_blueprint_functions_run() -> None:
    app = df.DFApp()
    app.register_blueprint(bp)
    async with DurableTestEnv(app) as env:
        assert await env.run("bp_sequence") == 8


async def test_client_before_registration_says_what_to_do() -> None:
    lonely = df.Blueprint()

    @lonely.durable_client_input(client_name="client")
    async def starter(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> str:
        return "unreachable"

    request = func.HttpRequest("POST", "http://localhost/api/x", body=b"")
    with pytest.raises(RuntimeError, match="register_functions"):
        await starter(request)
