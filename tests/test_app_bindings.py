"""DurableApp registers only standard bindings, as a stock Python v2 app may."""

from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path

import azure.functions as func
import pytest

import durable_ext as df
from durable_ext.bindings import queue_message

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
STANDARD = {
    "httpTrigger": "in",
    "http": "out",
    "queueTrigger": "in",
    "queue": "out",
    "timerTrigger": "in",
    "blob": None,
    "blobTrigger": "in",
    "table": None,
}


@pytest.fixture(scope="module")
def sample_app() -> df.DurableApp:
    sys.path.insert(0, str(SAMPLES))
    try:
        import function_app

        return function_app.app
    finally:
        sys.path.remove(str(SAMPLES))


def metadata(app: df.DurableApp) -> dict[str, dict]:
    return {f.get_function_name(): json.loads(f.get_function_json()) for f in app.get_functions()}


def test_only_standard_bindings(sample_app: df.DurableApp) -> None:
    functions = metadata(sample_app)
    assert len(functions) == len(sample_app.get_functions())  # unique names
    for name, meta in functions.items():
        assert meta["scriptFile"] == "function_app.py"
        triggers = [b for b in meta["bindings"] if b["type"].endswith("Trigger")]
        assert len(triggers) == 1, name
        for binding in meta["bindings"]:
            assert binding["type"] in STANDARD, (name, binding)
            expected = STANDARD[binding["type"]]
            if expected:
                assert binding["direction"].lower() == expected, (name, binding)
            route = binding.get("route")
            if route is not None:
                assert not route.lower().startswith(("admin", "runtime")), route


def test_builtin_functions_follow_host_json(sample_app: df.DurableApp) -> None:
    functions = metadata(sample_app)
    options = sample_app.durable_options
    assert options.hub_name == "DurableExtHub"
    queues = {
        m["bindings"][0]["queueName"]: m["bindings"][0]["connection"]
        for m in functions.values()
        if m["bindings"][0]["type"] == "queueTrigger"
    }
    expected = [f"durableexthub-control-{i:02d}" for i in range(options.partition_count)]
    assert set(queues) == {*expected, "durableexthub-workitems"}
    assert set(queues.values()) == {"AzureWebJobsStorage"}
    management = functions["durabletask_management"]["bindings"][0]
    assert management["route"] == "durabletask/{*path}"
    assert {"GET", "POST", "DELETE"} <= set(management["methods"])
    assert functions["durabletask_repair"]["bindings"][0]["type"] == "timerTrigger"
    starter = functions["http_start"]["bindings"][0]
    assert starter["route"] == "orchestrators/{functionName}"
    assert starter["authLevel"] == "ANONYMOUS"


def test_client_parameter_is_hidden_from_the_host(sample_app: df.DurableApp) -> None:
    fn = next(f for f in sample_app.get_functions() if f.get_function_name() == "http_start")
    user = fn.get_user_function()
    assert list(inspect.signature(user).parameters) == ["req"]
    assert inspect.iscoroutinefunction(user)
    # the worker resolves annotations (strings under ``from __future__ import annotations``)
    assert typing.get_type_hints(user) == {"req": func.HttpRequest, "return": func.HttpResponse}
    names = {b["name"] for b in json.loads(fn.get_function_json())["bindings"]}
    assert set(inspect.signature(user).parameters) <= names | {"context"}


def test_every_function_parameter_has_a_binding(sample_app: df.DurableApp) -> None:
    """The Python worker refuses a parameter without a binding of that name."""
    for fn in sample_app.get_functions():
        typing.get_type_hints(fn.get_user_function())  # resolvable, as the worker needs
        names = {b["name"] for b in json.loads(fn.get_function_json())["bindings"]}
        params = set(inspect.signature(fn.get_user_function()).parameters)
        assert params <= names | {"context"}, fn.get_function_name()


def test_durable_decorators_keep_functions_callable(sample_app: df.DurableApp) -> None:
    import function_app

    assert function_app.say_hello("Oslo") == "Hello Oslo!"
    assert inspect.isgeneratorfunction(function_app.hello_sequence)
    assert sample_app.registry.find("orchestrator", "hello_sequence") is not None
    assert sample_app.registry.find("activity", "square") is not None


def test_host_json_next_to_the_app_module(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text(
        json.dumps(
            {
                "version": "2.0",
                "extensions": {
                    "http": {"routePrefix": "x"},
                    "durableTask": {
                        "hubName": "OtherHub",
                        "storageProvider": {"partitionCount": 2, "connectionName": "Store"},
                    },
                },
            }
        )
    )
    app = df.DurableApp(app_dir=tmp_path)
    queues = [
        json.loads(f.get_function_json())["bindings"][0]
        for f in app.get_functions()
        if f.get_function_name() != "durabletask_management"
    ]
    names = {q.get("queueName") for q in queues} - {None}
    assert names == {"otherhub-control-00", "otherhub-control-01", "otherhub-workitems"}
    assert {q.get("connection") for q in queues} - {None} == {"Store"}
    assert app.host_settings.management_base_path == "/x/durabletask/"


def test_defaults_without_host_json(tmp_path: Path) -> None:
    app = df.DurableApp(app_dir=tmp_path)
    assert app.durable_options.partition_count == 4
    assert len(app.get_functions()) == 4 + 3


def test_client_injection_works_above_or_below_route(tmp_path: Path) -> None:
    app = df.DurableApp(app_dir=tmp_path)

    @app.durable_client_input(client_name="client")
    @app.route(route="a")
    async def above(req: func.HttpRequest, client) -> func.HttpResponse:
        return func.HttpResponse(type(client).__name__)

    @app.route(route="b")
    @app.durable_client_input(client_name="starter")
    async def below(req: func.HttpRequest, starter) -> func.HttpResponse:
        return func.HttpResponse(type(starter).__name__)

    for fn in app.get_functions():
        if fn.get_function_name() in ("above", "below"):
            assert list(inspect.signature(fn.get_user_function()).parameters) == ["req"]
    with pytest.raises(TypeError):
        app.durable_client_input(client_name="missing")(lambda req: None)


def test_queue_message_conversion() -> None:
    from azure.functions.queue import QueueMessage

    msg = QueueMessage(id="1", body=b'{"i": "x"}', dequeue_count=3, pop_receipt="p")
    converted = queue_message(msg)
    assert (converted.id, converted.content, converted.dequeue_count) == ("1", '{"i": "x"}', 3)


async def test_queue_function_runs_the_poison_handler_on_the_last_delivery(tmp_path: Path) -> None:
    """The Functions host moves the message to the poison queue itself; the instance must still fail."""
    from azure.functions.queue import QueueMessage

    app = df.DurableApp(app_dir=tmp_path)
    poisoned: list[int] = []

    class Handlers:
        async def on_control(self, message: object) -> None:
            raise RuntimeError("handler failed")

        async def on_control_poison(self, message: object) -> None:
            poisoned.append(message.dequeue_count)  # type: ignore[attr-defined]

    class Runtime:
        handlers = Handlers()
        options = app.durable_options

    app.use_durable_runtime(Runtime())  # type: ignore[arg-type]
    control = next(f for f in app.get_functions() if f.get_function_name() == "durabletask_control_00")
    for count in (1, app.durable_options.max_dequeue_count):
        with pytest.raises(RuntimeError):
            await control.get_user_function()(msg=QueueMessage(id="m", body=b"{}", dequeue_count=count))
    assert poisoned == [app.durable_options.max_dequeue_count]
