"""DurableApp: the decorators of ``azure.durable_functions`` on a Functions app.

``@app.orchestration_trigger``, ``@app.activity_trigger`` and
``@app.entity_trigger`` record the function in the app's registry and return
it unchanged, so it stays an ordinary, directly testable Python function.

With the Functions host the app registers only standard bindings
(``app.get_functions()``): an HTTP trigger ``durabletask_management`` on
``durabletask/{*path}`` serving the management API, one queue trigger per
control queue (``durabletask_control_NN`` on ``{hub}-control-NN``), one on
``{hub}-workitems`` (``durabletask_workitems``) and a timer
(``durabletask_repair``, every 10 s) running the repair sweep. The hub name,
partition count and connection come from the ``host.json`` next to the module
that created the app (defaults without one), read when the app is created.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import azure.functions as func
from azure.functions.decorators.function_app import FunctionBuilder

from . import bindings as b
from .core.registry import Kind, Registry

F = TypeVar("F", bound=Callable[..., Any])


class _DurableDecorators:
    """The decorators of ``azure.durable_functions``, shared by DurableApp and Blueprint."""

    registry: Registry
    _kinds: dict[int, Kind]

    def _init_durable(self) -> None:
        self.registry = Registry()
        self._kinds = {}

    async def durable_runtime(self) -> b.DurableRuntime:  # pragma: no cover - overridden
        """The runtime the injected clients use."""
        raise NotImplementedError

    def durable_client_input(
        self, client_name: str, task_hub: str | None = None, connection_name: str | None = None
    ) -> Callable[[Any], Any]:
        """Pass a ``DurableOrchestrationClient`` to the decorated function as ``client_name``.

        No binding is added: the function's signature, as the Functions host sees
        it, simply loses that parameter. The function must be ``async def``.
        """
        if task_hub or connection_name:
            log.warning("durable_client_input: task_hub and connection_name are ignored; host.json decides")

        def decorator(fn: Any) -> Any:
            if isinstance(fn, FunctionBuilder):
                function = fn._function
                function._func = _inject_client(self, function._func, client_name)
                return fn
            return _inject_client(self, fn, client_name)

        return decorator

    def _register(self, kind: Kind, fn: F, name: str | None, input_name: str | None, input_type: Any) -> F:
        if not callable(fn):
            raise TypeError(f"@{kind}_trigger decorates a function, got {fn!r}")
        self.registry.add(kind, fn, name or getattr(fn, "__durable_name__", None), input_name, input_type)
        self._kinds[id(fn)] = kind
        return fn

    def orchestration_trigger(  # type: ignore[override]
        self, context_name: str = "context", orchestration: str | None = None, input_type: Any = None
    ) -> Callable[[F], F]:
        """Register a generator function as an orchestrator (name: ``orchestration`` or its own)."""
        return lambda fn: self._register("orchestrator", fn, orchestration, context_name, input_type)

    def activity_trigger(  # type: ignore[override]
        self, input_name: str = "input", activity: str | None = None
    ) -> Callable[[F], F]:
        """Register an activity; ``input_name`` is the parameter that receives the input."""
        return lambda fn: self._register("activity", fn, activity, input_name, None)

    def entity_trigger(  # type: ignore[override]
        self, context_name: str = "context", entity_name: str | None = None
    ) -> Callable[[F], F]:
        """Register an entity function."""
        return lambda fn: self._register("entity", fn, entity_name, context_name, None)

    def function_name(self, name: str, setting_extra_fields: dict[str, Any] | None = None):  # type: ignore[override]
        """Give a function its registered name (above or below its trigger decorator)."""
        base = super().function_name(name, setting_extra_fields or {})

        def decorator(fn: Any) -> Any:
            kind = self._kinds.get(id(fn))
            if kind is not None:
                self.registry.rename(kind, getattr(fn, "__durable_name__", None) or fn.__name__, name)
                fn.__durable_name__ = name
                return fn
            if callable(fn) and not hasattr(fn, "build"):
                fn.__durable_name__ = name
                return fn
            return base(fn)

        return decorator


class DurableApp(_DurableDecorators, func.FunctionApp):
    """A function app whose orchestrators, activities and entities durable_ext runs."""

    def __init__(
        self,
        http_auth_level: func.AuthLevel | str = func.AuthLevel.FUNCTION,
        *,
        app_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(http_auth_level=http_auth_level)
        self._init_durable()
        self.app_dir: Path | None = Path(app_dir) if app_dir is not None else _caller_dir()
        self.host_settings = b.load_host_settings(self.app_dir)
        self._runtime: b.DurableRuntime | None = None
        self._runtime_lock: asyncio.Lock | None = None
        self._register_builtin_functions()

    # ------------------------------------------------------------------ runtime

    @property
    def durable_options(self) -> Any:
        """The ``DurableTaskOptions`` the built-in functions were registered with."""
        return self.host_settings.options

    def use_durable_runtime(self, runtime: b.DurableRuntime | None) -> None:
        """Install the runtime the built-in functions use (the local host shares its worker's)."""
        self._runtime = runtime

    async def durable_runtime(self) -> b.DurableRuntime:
        """The runtime of this process, built from the app settings on first use."""
        if self._runtime is not None:
            return self._runtime
        if self._runtime_lock is None:
            self._runtime_lock = asyncio.Lock()
        async with self._runtime_lock:
            if self._runtime is None:
                self._runtime = await b.DurableRuntime.from_settings(self.registry, self.host_settings)
        return self._runtime

    def _register_builtin_functions(self) -> None:
        options = self.host_settings.options
        connection = options.connection_name
        app = self

        async def durabletask_management(req: func.HttpRequest) -> func.HttpResponse:
            from .http_api import from_func_request, to_func_response

            runtime = await app.durable_runtime()
            return to_func_response(await runtime.api.handle(from_func_request(req)))

        self.function_name(b.MANAGEMENT_FUNCTION)(
            self.route(
                route="durabletask/{*path}",
                methods=["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"],
                auth_level=self.auth_level,
            )(durabletask_management)
        )
        for index, queue in enumerate(options.control_queues):
            handler = _queue_function(self, "control", b.control_function(index))
            self.function_name(b.control_function(index))(
                self.queue_trigger(arg_name="msg", queue_name=queue, connection=connection)(handler)
            )
        handler = _queue_function(self, "work_item", b.WORKITEMS_FUNCTION)
        self.function_name(b.WORKITEMS_FUNCTION)(
            self.queue_trigger(arg_name="msg", queue_name=options.workitem_queue, connection=connection)(
                handler
            )
        )

        async def durabletask_repair(timer: func.TimerRequest) -> None:
            runtime = await app.durable_runtime()
            await runtime.backend.repair()

        self.function_name(b.REPAIR_FUNCTION)(
            self.timer_trigger(arg_name="timer", schedule=b.REPAIR_SCHEDULE)(durabletask_repair)
        )

    def register_functions(self, function_container: Any) -> None:
        """Register a blueprint's functions; a durable Blueprint's orchestrators and activities too."""
        if isinstance(function_container, Blueprint):
            for info in function_container.registry:
                self.registry.add(info.kind, info.fn, info.name, info.input_name, info.input_type)
            function_container._app = self
        super().register_functions(function_container)

    register_blueprint = register_functions

    def get_functions(self) -> list[Any]:
        """The functions' metadata, as the Python worker indexes them (may be called again)."""
        self.functions_bindings = None  # the base class keeps names across calls and would refuse
        return super().get_functions()


class Blueprint(_DurableDecorators, func.Blueprint):
    """Durable functions defined apart from the app; ``app.register_functions(bp)`` adds them."""

    def __init__(self, http_auth_level: func.AuthLevel | str = func.AuthLevel.FUNCTION) -> None:
        super().__init__(http_auth_level=http_auth_level)
        self._init_durable()
        self._app: DurableApp | None = None

    async def durable_runtime(self) -> b.DurableRuntime:
        """The runtime of the app this blueprint was registered with."""
        if self._app is None:
            raise RuntimeError("register the blueprint first: app.register_functions(bp)")
        return await self._app.durable_runtime()


DFApp = DurableApp

log = logging.getLogger("durable_ext.app")


def _caller_dir() -> Path | None:
    """Folder of the module that created the app (the first frame outside this module)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    while frame is not None and frame.f_code.co_name == "__init__":  # a subclass's __init__
        frame = frame.f_back  # type: ignore[assignment]
    filename = frame.f_globals.get("__file__") if frame is not None else None
    if filename:
        return Path(filename).resolve().parent
    root = os.environ.get("AzureWebJobsScriptRoot")  # noqa: SIM112 - the host's own spelling
    return Path(root) if root else Path.cwd()


def _queue_function(app: DurableApp, kind: str, name: str) -> Callable[..., Any]:
    """An async queue-trigger function calling the handlers' ``on_{kind}``.

    On its last delivery a failure also runs the poison handler, since the
    Functions host moves the message to the poison queue without telling us.
    """

    async def handler(msg: func.QueueMessage) -> None:
        runtime = await app.durable_runtime()
        message = b.queue_message(msg)
        try:
            await getattr(runtime.handlers, f"on_{kind}")(message)
        except Exception:
            if message.dequeue_count >= runtime.options.max_dequeue_count:
                await getattr(runtime.handlers, f"on_{kind}_poison")(message)
            raise

    handler.__name__ = handler.__qualname__ = name
    return handler


def _inject_client(app: _DurableDecorators, fn: Callable[..., Any], client_name: str) -> Callable[..., Any]:
    signature = inspect.signature(fn)
    if client_name not in signature.parameters:
        raise TypeError(f"{fn.__name__} has no parameter named {client_name!r} for the durable client")
    visible = signature.replace(parameters=[p for n, p in signature.parameters.items() if n != client_name])

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        runtime = await app.durable_runtime()
        kwargs[client_name] = runtime.new_client()
        result = fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    # what the Python worker inspects: the signature and type hints without the client
    # (``__wrapped__`` stays so that typing.get_type_hints resolves names in the user's module)
    wrapper.__signature__ = visible  # type: ignore[attr-defined]
    wrapper.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != client_name}
    wrapper.__durable_client__ = client_name  # type: ignore[attr-defined]
    return wrapper
