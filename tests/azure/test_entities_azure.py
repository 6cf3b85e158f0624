"""Durable entities on a real Azurite: state, calls, listing, scheduled signals, order, crashes, locks.

The app is ``entity_app.py`` (run in this process, or copied as ``function_app.py``
for ``python -m durable_ext.host.worker`` processes). Every test gets a fresh hub with
short repair intervals so a crash is repaired within seconds.

* basics: client signals and reads, ``call_entity`` results and failures (a failing
  operation's state change is rolled back), ``list_entities`` paging, scheduled
  signals (held, not applied early, applied when due), orchestration listings
  without entities;
* order: appends from several orchestrations, signals and calls mixed and spread over
  steps, reach the entity (and, by entity-to-entity signals, a mirror) in sender order;
  a step whose dispatch is delayed makes the entity hold the next step's requests;
* crashes: the same under faults raised in this process and SIGKILLs of worker
  processes at every fault point: every operation applied exactly once, in order,
  no inbox or outbox row left;
* critical sections: transfers between accounts across two worker processes (one of
  them killed, in a variant) conserve money and never overdraw; an orchestration
  terminated while holding or awaiting a lock, or failing inside one, leaves no
  entity locked.

In-process tests print what the entity logic dropped or held (``EntitySpy``); the
kill tests print outboxes re-dispatched and operations and activities re-run."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from entity_app import app
from procs import (
    REPAIR_INTERVAL,
    Hub,
    WorkerProcess,
    history_problems,
    host_json,
    leftovers,
    new_hub,
    options_of,
    wait_all,
)

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext import engine as engine_module
from durable_ext.backends.azure.backend import AzureBackend, FaultHook
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.core.entities import EntityRequest, SchedulerState, run_entity_step
from durable_ext.host.azurite import Azurite
from durable_ext.host.worker import AzureWorker

HERE = Path(__file__).resolve().parent
LEASE = 1.5  # seconds (the worker processes get the same)
POINTS = ["commit.before", "commit.after", "dispatch.after", "outbox.deleted"]
RECOVERY_BOUND = 30.0


class EntityHub(Hub):
    """A fresh hub whose app folder holds ``entity_app.py``; in-process workers run that app."""

    def worker(self, backend: AzureBackend, repair_interval: float = REPAIR_INTERVAL) -> AzureWorker:
        return AzureWorker(
            app.registry, backend, backend.options, repair_interval=timedelta(seconds=repair_interval)
        )

    def backend_for_worker(self, fault: FaultHook | None = None) -> AzureBackend:
        return self.new_backend(fault, lease=LEASE)

    def process(self, name: str, fault: str = "") -> WorkerProcess:
        return WorkerProcess(self.app_dir, self.connection_string, fault=fault, lease=LEASE, name=name)


@pytest.fixture
async def hub(azurite: Azurite, tmp_path: Path) -> AsyncIterator[EntityHub]:
    """A hub with the entity app, deleted after the test."""
    doc = host_json(new_hub("En"))
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copyfile(HERE / "entity_app.py", app_dir / "function_app.py")
    (app_dir / "host.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    backend = AzureBackend(connection, options_of(doc), lease=timedelta(seconds=LEASE))
    await backend.create_task_hub()
    made = EntityHub(
        app_dir,
        doc,
        azurite.connection_string,
        backend,
        DurableOrchestrationClient(backend),
        tmp_path / "log",
    )
    yield made
    await made.close()


# -------------------------------------------------------------------- helpers


def eid(name: str, key: str) -> df.EntityId:
    return df.EntityId(name, key)


async def scheduler_state(backend: AzureBackend, entity: df.EntityId) -> dict[str, Any]:
    """The entity's scheduler state (user state, lock, queue, held, senders) as a dict."""
    record = await backend.get_instance(str(entity))
    assert record is not None, f"no record for {entity}"
    return json.loads(record.input or "{}")


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``probe`` until it returns something truthy; that value (AssertionError after timeout)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what} (last {last!r})")
        await asyncio.sleep(interval)


async def state_of(client: DurableOrchestrationClient, entity: df.EntityId) -> Any:
    return (await client.read_entity_state(entity)).entity_state


async def state_becomes(client: DurableOrchestrationClient, entity: df.EntityId, want: Any, timeout=15.0):
    async def probe() -> bool:
        return await state_of(client, entity) == want

    await eventually(probe, timeout, what=f"state of {entity} == {want!r}")


def ordered_problems(lists: dict[str, list[int]], senders: list[str], n: int) -> list[str]:
    """What differs from every sender's list being exactly 0..n-1 (duplicates, gaps, order)."""
    problems = []
    for sender in senders:
        got = lists.get(sender, [])
        if got != list(range(n)):
            dups = sorted(i for i, c in Counter(got).items() if c > 1)
            missing = sorted(set(range(n)) - set(got))
            problems.append(f"{sender}: {got} (duplicates {dups}, missing {missing})")
    problems += [f"unexpected sender {s}" for s in lists if s not in senders]
    return problems


# ------------------------------------------------------------------------ basics


async def test_client_signals_then_read_state(hub: EntityHub) -> None:
    """Client signals apply in arrival order; the state reads back; unknown entities do not exist."""
    backend = hub.backend_for_worker()
    try:
        async with hub.worker(backend):
            for amount in (1, 2, 3):
                await hub.client.signal_entity(eid("counter", "a"), "add", amount)
            await state_becomes(hub.client, eid("counter", "a"), 6)
            response = await hub.client.read_entity_state(eid("Counter", "a"))  # names are case-insensitive
            assert (response.entity_exists, response.entity_state) == (True, 6)
            missing = await hub.client.read_entity_state(eid("counter", "nobody"))
            assert (missing.entity_exists, missing.entity_state) == (False, None)
            await hub.client.signal_entity(eid("counter", "a"), "delete")
            await eventually(lambda: _not_exists(hub.client, eid("counter", "a")), what="counter/a deleted")
            assert await leftovers(hub.backend, ["@counter@a"], 10) == []
    finally:
        await backend.close()


async def _not_exists(client: DurableOrchestrationClient, entity: df.EntityId) -> bool:
    return not (await client.read_entity_state(entity)).entity_exists


async def test_call_entity_result_and_failed_operation_rolls_back(hub: EntityHub) -> None:
    """``call_entity`` returns the result; a raising operation fails the call and changes nothing."""
    backend = hub.backend_for_worker()
    try:
        async with hub.worker(backend):
            iid = await hub.client.start_new("caller", client_input="k")
            status = await hub.client.wait_for_completion(iid, timeout=20)
            assert status.runtime_status == Status.Completed, status.output
            out = status.output
            assert out["first"] == 5 and out["after"] == 5, out
            assert out["failed"] is not None and "refused to add 100" in out["failed"], out
            assert out["unknown"] is not None and "nosuch" in out["unknown"], out
            await state_becomes(hub.client, eid("counter", "k"), 5)
            assert history_problems(await hub.backend.get_history(iid)) == []
            assert await leftovers(hub.backend, [iid, "@counter@k", "@nosuch@x"], 10) == []
    finally:
        await backend.close()


async def test_list_entities_paging_and_orchestration_listing(hub: EntityHub) -> None:
    """Pages of ``list_entities`` cover every existing entity once; orchestration listings skip them."""
    keys = [f"k{n}" for n in range(7)]
    backend = hub.backend_for_worker()
    try:
        async with hub.worker(backend):
            for n, key in enumerate(keys):
                await hub.client.signal_entity(eid("counter", key), "add", n + 1)
            for key in ("j0", "j1"):
                await hub.client.signal_entity(eid("journal", key), "append", {"s": "client", "i": 0})
            await hub.client.signal_entity(eid("counter", "gone"), "add", 1)
            await hub.client.signal_entity(eid("counter", "gone"), "delete")
            iid = await hub.client.start_new("caller", client_input="called")
            await hub.client.wait_for_completion(iid, timeout=20)
            for n, key in enumerate(keys):
                await state_becomes(hub.client, eid("counter", key), n + 1)
            for key in ("j0", "j1"):
                await state_becomes(hub.client, eid("journal", key), {"client": [0]})
            await eventually(lambda: _not_exists(hub.client, eid("counter", "gone")), what="gone deleted")
    finally:
        await backend.close()

    async def pages(name: str | None, size: int) -> list[list[df.EntityMetadata]]:
        out, token = [], None
        while True:
            result = await hub.client.list_entities(
                name, fetch_state=True, page_size=size, continuation_token=token
            )
            assert len(result.entities) <= size
            out.append(result.entities)
            token = result.continuation_token
            if not token:
                return out
            assert len(out) < 20, "paging does not end"

    counters = await pages("counter", 3)
    listed = [m for page in counters for m in page]
    assert len(counters) >= 3, [len(p) for p in counters]
    assert sorted(m.entity_id.key for m in listed) == sorted([*keys, "called"])  # each once, "gone" not
    by_key = {m.entity_id.key: m for m in listed}
    assert all(by_key[k].state == n + 1 for n, k in enumerate(keys))
    assert all(m.entity_id.name == "counter" and m.last_operation_time is not None for m in listed)
    every = [m for page in await pages(None, 4) for m in page]
    assert sorted(str(m.entity_id) for m in every) == sorted(
        [*(f"@counter@{k}" for k in [*keys, "called"]), "@journal@j0", "@journal@j1"]
    )
    without_state = await hub.client.list_entities("journal")  # no state unless asked for
    assert [m.state for m in without_state.entities] == [None, None]

    statuses = await hub.client.get_status_all()
    assert [s.instance_id for s in statuses] == [iid]
    page = await hub.client.list_instances(page_size=2)
    assert [s.instance_id for s in page.statuses] == [iid] and page.continuation_token is None


async def schedule_two_signals(hub: EntityHub, target: df.EntityId, seconds: float) -> datetime:
    """``add 10`` scheduled by the client and ``add 1`` by an orchestrator ``seconds`` ahead, then an
    immediate ``add 1`` that makes the entity step (and hold both); the later of the two times."""
    due = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    await hub.client.signal_entity(target, "add", 10, scheduled_time=due)
    args = {"key": target.key, "seconds": seconds}
    iid = await hub.client.start_new("schedule_signal", client_input=args)
    status = await hub.client.wait_for_completion(iid, timeout=10)
    due = max(due, datetime.fromisoformat(status.output))
    assert await leftovers(hub.backend, [iid], 5) == []  # its signal is in the entity's inbox
    await hub.client.signal_entity(target, "add", 1)
    await state_becomes(hub.client, target, 1)

    async def both_held() -> bool:
        return len((await scheduler_state(hub.backend, target)).get("held", [])) == 2

    await eventually(both_held, 5, what="both scheduled signals held")
    return due


async def test_scheduled_signal_is_not_applied_early(hub: EntityHub) -> None:
    """Signals scheduled a few seconds ahead (by the client and by an orchestrator) wait, held."""
    target = eid("counter", "early")
    backend = hub.backend_for_worker()
    try:
        async with hub.worker(backend):
            due = await schedule_two_signals(hub, target, 4)
            polls = 0
            while datetime.now(timezone.utc) < due - timedelta(seconds=0.3):
                assert await state_of(hub.client, target) == 1, "a scheduled signal applied early"
                polls += 1
                await asyncio.sleep(0.1)
    finally:
        await backend.close()
    assert polls > 5


async def test_scheduled_signal_is_applied_after_its_time(hub: EntityHub) -> None:
    """Held scheduled signals apply once their time has come (their delayed wake-up)."""
    target = eid("counter", "later")
    backend = hub.backend_for_worker()
    try:
        async with hub.worker(backend):
            due = await schedule_two_signals(hub, target, 3)
            await state_becomes(hub.client, target, 12, timeout=LEASE + 8)
            applied = datetime.now(timezone.utc)
            state = await scheduler_state(hub.backend, target)
    finally:
        await backend.close()
    assert datetime.fromisoformat(state["last_op"]) >= due, (state, due)
    assert not state.get("held"), state
    print(f"\nscheduled signals applied {(applied - due).total_seconds():.1f}s after their time")


# ------------------------------------------------------------------------ order


def writer_input(key: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"key": key, "n": n, "call_every": 4, "pause_every": 7, **extra}


def expected_calls(args: dict[str, Any]) -> list[int]:
    every = args.get("call_every") or 0
    return [i + 1 for i in range(args["n"]) if every and i % every == every - 1]


async def check_writers(hub: EntityHub, writers: dict[str, dict[str, Any]], key: str, mirror: str | None):
    """Every writer completed with the right call results; journal (and mirror) lists are 0..n-1."""
    for iid, args in writers.items():
        status = await hub.client.get_status(iid)
        assert status is not None, iid
        assert status.runtime_status == Status.Completed, (iid, status.output)
        assert status.output == expected_calls(args), (iid, status.output)
        assert history_problems(await hub.backend.get_history(iid)) == [], iid
    n = next(iter(writers.values()))["n"]

    async def complete() -> Any:  # the last appends are signals: they may still be on their way
        state = await state_of(hub.client, eid("journal", key)) or {}
        return state if all(len(state.get(w, ())) >= n for w in writers) else None

    journal = await eventually(complete, 10, what="every append applied")
    assert ordered_problems(journal, list(writers), n) == []
    if mirror is not None:

        async def mirrored() -> bool:
            return await state_of(hub.client, eid("mirror", mirror)) == journal

        await eventually(mirrored, 10, what="mirror caught up")


async def test_signals_from_many_orchestrations_arrive_in_sender_order(hub: EntityHub) -> None:
    """30 appends from each of 4 orchestrations over several steps, two workers: each in order."""
    writers: dict[str, dict[str, Any]] = {}
    backends = [hub.backend_for_worker(), hub.backend_for_worker()]
    try:
        async with hub.worker(backends[0]), hub.worker(backends[1]):
            for n in range(4):
                args = writer_input("shared", 30, pause="timer" if n % 2 else "activity", mirror="m")
                writers[await hub.client.start_new("writer", client_input=args)] = args
            elapsed = await wait_all(hub.client, list(writers), 60)
            await check_writers(hub, writers, "shared", "m")
            every = [*writers, "@journal@shared", "@mirror@m"]
            assert await leftovers(hub.backend, every, 10) == []
    finally:
        for backend in backends:
            await backend.close()
    print(f"\n4 x 30 ordered appends in {elapsed:.1f}s")


# ---------------------------------------------------------------------- crashes


class RaiseAt(FaultHook):
    """Raise at the listed passes (1-based) of one fault point, counted apart for entity steps
    and orchestration steps (the instance id is read from the backend method's frame)."""

    def __init__(self, point: str, entity_passes: set[int], orchestration_passes: set[int]) -> None:
        self.point = point
        self.passes = {True: entity_passes, False: orchestration_passes}
        self.seen = {True: 0, False: 0}
        self.raised = {True: 0, False: 0}

    def check(self, point: str) -> None:
        if point != self.point:
            return
        iid = str(sys._getframe(1).f_locals.get("iid", ""))
        entity = iid.startswith("@")
        self.seen[entity] += 1
        if self.seen[entity] in self.passes[entity]:
            self.raised[entity] += 1
            raise RuntimeError(f"injected fault at {point} in {iid} (pass {self.seen[entity]})")


class EntitySpy:
    """Wraps the entity step of in-process workers to count what the entity logic drops or holds.

    ``duplicates``: requests whose sender sequence number was applied before (re-dispatched copies);
    ``row_copies``: second inbox rows of one message the backend dropped by message id;
    ``held``: the requests held back after a step because an earlier one of their sender was missing.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        self.duplicates = 0
        self.row_copies = 0
        self.held: set[tuple[str, str, int]] = set()
        monkeypatch.setattr(engine_module, "run_entity_step", self._step)

    def watch(self, backend: AzureBackend) -> AzureBackend:
        """Count the duplicate inbox rows ``backend`` drops when loading an entity."""
        load = backend.load

        async def counted(instance_id: str, *args: Any, **kwargs: Any) -> Any:
            loaded = await load(instance_id, *args, **kwargs)
            if loaded is not None and instance_id.startswith("@"):
                self.row_copies += sum(1 for k in loaded.etag.drop_keys if k.startswith("i-"))
            return loaded

        backend.load = counted  # type: ignore[method-assign]
        return backend

    def _step(self, registry: Any, record: Any, inbox: list[Any], now: datetime, **kwargs: Any) -> Any:
        before = SchedulerState.from_json(record.input)
        for message in inbox:
            try:
                request = EntityRequest.from_json(message.event.get("Input"))
            except Exception:
                continue
            last = before.senders.get(request.sender or "")
            if request.seq and last and request.seq <= int(last[0]):
                self.duplicates += 1
        result = run_entity_step(registry, record, inbox, now, **kwargs)
        after = SchedulerState.from_json(result.record.input)
        self.steps += 1
        for req in after.held:
            if req.get("seq") and not req.get("at"):
                self.held.add((record.instance_id, req["sender"], int(req["seq"])))
        return result

    def __str__(self) -> str:
        return (
            f"{self.steps} entity steps, {self.duplicates} duplicates dropped by sequence number, "
            f"{self.row_copies} duplicate rows dropped by message id, {len(self.held)} requests held "
            "out of order"
        )


FAULT_WRITERS = 3
FAULT_N = 12


async def start_fault_writers(hub: EntityHub, key: str) -> dict[str, dict[str, Any]]:
    writers = {}
    hub.log.mkdir(exist_ok=True)
    for n in range(FAULT_WRITERS):
        args = writer_input(
            key, FAULT_N, call_every=3, pause_every=4, mirror=key, log=str(hub.log / "runs.log")
        )
        writers[await hub.client.start_new("writer", f"w{n}-{key}", args)] = args
    return writers


def run_counts(hub: EntityHub) -> tuple[int, int]:
    """(journal operations re-executed, activities re-run), from the run log."""
    path = hub.log / "runs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    runs = Counter(line.split(" ")[0] for line in lines)
    ops = sum(c - 1 for k, c in runs.items() if not k.startswith("tick:"))
    ticks = sum(c - 1 for k, c in runs.items() if k.startswith("tick:"))
    return ops, ticks


async def check_fault_run(hub: EntityHub, writers: dict[str, dict[str, Any]], key: str) -> None:
    await check_writers(hub, writers, key, key)
    every = [*writers, f"@journal@{key}", f"@mirror@{key}"]
    assert await leftovers(hub.backend, every, RECOVERY_BOUND) == []
    for entity in (eid("journal", key), eid("mirror", key)):
        state = await scheduler_state(hub.backend, entity)
        assert not state.get("held") and not state.get("queue") and not state.get("lock"), state


@pytest.mark.parametrize("point", POINTS)
async def test_fault_raised_in_process(hub: EntityHub, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps failing at ``point`` are retried or repaired: each append applied once, in order."""
    spy = EntitySpy(monkeypatch)
    fault = RaiseAt(point, {2, 6, 11}, {3, 8})
    backend = spy.watch(hub.backend_for_worker(fault))
    key = "r" + point.replace(".", "")
    try:
        async with hub.worker(backend):
            writers = await start_fault_writers(hub, key)
            elapsed = await wait_all(hub.client, list(writers), RECOVERY_BOUND)
            await check_fault_run(hub, writers, key)
    finally:
        await backend.close()
    assert fault.raised == {True: 3, False: 2}, f"the fault point was passed only {fault.seen} times"
    ops, ticks = run_counts(hub)
    print(
        f"\n{point}:raise in 3 entity and 2 orchestration steps: done in {elapsed:.1f}s; "
        f"operations re-executed {ops}, activities re-run {ticks}; {spy}"
    )


async def committed_status(backend: AzureBackend, iid: str) -> Any:
    """The custom status in the instance's sentinel (committed, whether dispatched or not)."""
    sentinel = await backend.history.get_entity(iid, "sentinel")
    text = sentinel.get("CustomStatus")
    return json.loads(text) if text else None


async def test_delayed_dispatch_is_held_until_the_gap_fills(
    hub: EntityHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps whose dispatch fails at ``commit.after`` reach the entity only when the background retry
    sends them (held back here until after the signals of the next step): the entity holds those
    until the gap fills, then applies all in order."""
    spy = EntitySpy(monkeypatch)
    fault = RaiseAt("commit.after", set(), {1, 3})  # the orchestration steps sending rounds 0 and 2
    backend = spy.watch(hub.backend_for_worker(fault))
    finish = backend._finish

    async def late_finish(*args: Any) -> None:
        await asyncio.sleep(1.5)  # the next round is sent meanwhile
        await finish(*args)

    monkeypatch.setattr(backend, "_finish", late_finish)
    try:
        async with hub.worker(backend):
            args = {"key": "gap", "rounds": 4, "per_round": 5}
            iid = await hub.client.start_new("rounds", client_input=args)
            for r in range(args["rounds"] - 1):

                async def sent(r: int = r) -> bool:
                    return await committed_status(hub.backend, iid) == r

                await eventually(sent, 10, 0.05, what=f"round {r} committed")
                await hub.client.raise_event(iid, "next")
            status = await hub.client.wait_for_completion(iid, 20)
            assert (status.runtime_status, status.output) == (Status.Completed, 20)
            await state_becomes(hub.client, eid("journal", "gap"), {iid: list(range(20))}, timeout=10)
            assert await leftovers(hub.backend, [iid, "@journal@gap"], 10) == []
    finally:
        await backend.close()
    assert fault.raised[False] == 2
    assert len(spy.held) >= 10, f"the entity never held a message out of order: {spy}"
    print(f"\ndelayed dispatch: {spy}")


# Which passes of the point kill the first and the second worker process (counted anew in each).
KILLS = {
    "commit.before": (6, 10),
    "commit.after": (6, 10),
    "dispatch.after": (5, 8),
    "outbox.deleted": (5, 8),
}


@pytest.mark.parametrize("point", POINTS)
async def test_worker_process_killed(hub: EntityHub, point: str) -> None:
    """SIGKILL a worker process at ``point`` twice; a fresh one finishes: exactly once, in order."""
    key = "k" + point.replace(".", "")
    processes: list[WorkerProcess] = []
    unfinished: list[int] = []
    try:
        writers = await start_fault_writers(hub, key)
        for n, nth in enumerate(KILLS[point]):
            worker = hub.process(f"killed{n}", fault=f"{point}:kill:{nth}")
            processes.append(worker)
            code = await asyncio.to_thread(worker.wait, 60)
            assert code == -signal.SIGKILL, f"worker exited with {code}:\n{worker.log_tail()}"
            statuses = [await hub.client.get_status(i) for i in writers]
            unfinished.append(sum(1 for s in statuses if s is None or not s.runtime_status.is_terminal))
            assert unfinished[-1], f"kill {n + 1} came after every writer had finished"
        last = hub.process("last")
        processes.append(last)
        try:
            elapsed = await wait_all(hub.client, list(writers), RECOVERY_BOUND)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{last.log_tail()}") from exc
        await check_fault_run(hub, writers, key)
    finally:
        for process in processes:
            process.stop()
    redispatched = sum(
        p.log_path.read_text(errors="replace").count("re-dispatching outbox") for p in processes
    )
    ops, ticks = run_counts(hub)
    print(
        f"\n{point}:kill at passes {KILLS[point]}: {unfinished} unfinished at the kills, done {elapsed:.1f}s "
        f"after the restart; outboxes re-dispatched {redispatched}, operations re-executed {ops}, "
        f"activities re-run {ticks}"
    )


# ------------------------------------------------------------ critical sections


async def balances(client: DurableOrchestrationClient, keys: list[str]) -> dict[str, int]:
    out = {}
    for key in keys:
        state = await state_of(client, eid("account", key))
        out[key] = state["balance"] if state else 0
    return out


def move(src: str, dst: str, amount: int) -> dict[str, Any]:
    """Input of ``transfer``."""
    return {"src": src, "dst": dst, "amount": amount}


async def assert_unlocked(backend: AzureBackend, keys: list[str], timeout: float = 10.0) -> None:
    """No account is locked or has requests queued (once the releases in flight have arrived)."""
    deadline = time.monotonic() + timeout
    while True:
        states = {k: await scheduler_state(backend, eid("account", k)) for k in keys}
        locked = {k: s for k, s in states.items() if "lock" in s or s.get("queue")}
        if not locked:
            return
        assert time.monotonic() < deadline, f"still locked after {timeout}s: {locked}"
        await asyncio.sleep(0.1)


async def balances_become(client: DurableOrchestrationClient, want: dict[str, int]) -> None:
    async def probe() -> bool:
        return await balances(client, list(want)) == want

    await eventually(probe, 10, what=f"balances {want}")


async def test_transfers_under_contention_across_two_processes(
    hub: EntityHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Concurrent transfers in critical sections on two worker processes: money is conserved,
    no balance goes negative, every transfer completes and no account stays locked."""
    keys = ["a", "b", "c", "d"]
    rng = random.Random(7)
    trace = tmp_path / "accounts.log"
    monkeypatch.setenv("ENTITY_APP_TRACE", str(trace))  # the worker processes inherit it
    processes = [hub.process("p0"), hub.process("p1")]
    try:
        for key in keys:
            await hub.client.signal_entity(eid("account", key), "deposit", 100)
        for key in keys:
            await state_becomes(hub.client, eid("account", key), {"balance": 100}, timeout=20)
        transfers: dict[str, dict[str, Any]] = {}
        for _ in range(16):
            src, dst = rng.sample(keys, 2)
            args = move(src, dst, rng.randrange(40, 91))
            transfers[await hub.client.start_new("transfer", client_input=args)] = args
            if len(transfers) % 4 == 0:  # client signals meet locked entities: queued, not lost
                for key in keys:
                    await hub.client.signal_entity(eid("account", key), "deposit", 1)
        elapsed = await wait_all(hub.client, list(transfers), 60)
        moved = 0
        for iid, args in transfers.items():
            status = await hub.client.get_status(iid)
            assert status is not None and status.runtime_status == Status.Completed, (iid, status.output)
            assert status.output in (0, args["amount"]), (args, status.output)
            moved += status.output > 0
        expected_total = 100 * len(keys) + 4 * len(keys)

        async def settled() -> dict[str, int] | None:
            now = await balances(hub.client, keys)
            return now if sum(now.values()) == expected_total else None

        final = await eventually(settled, 10, what="client deposits applied")
        assert all(v >= 0 for v in final.values()), final
        await assert_unlocked(hub.backend, keys)
        assert await leftovers(hub.backend, [*transfers, *(f"@account@{k}" for k in keys)], 10) == []
    finally:
        for process in processes:
            process.stop()
    by_pid = Counter(line.split(" ")[1] for line in trace.read_text().splitlines())
    # which process takes a wake-up is timing: both usually run operations, one may run them all
    assert by_pid and set(by_pid) <= {str(p.pid) for p in processes}, f"operations per process: {by_pid}"
    print(
        f"\n16 transfers on 2 processes in {elapsed:.1f}s: {moved} moved money; balances {final}; "
        f"deposits/withdrawals per process {sorted(by_pid.values())}"
    )


@pytest.mark.parametrize("point", ["commit.after", "dispatch.after"])
async def test_transfers_survive_a_killed_worker_process(hub: EntityHub, point: str) -> None:
    """One of two worker processes is SIGKILLed at ``point`` amid the transfers (lock requests,
    forwards and grants delayed or sent twice); after a restart the books still balance."""
    keys = ["a", "b", "c"]
    rng = random.Random(11)
    # the doomed process starts first, so it is busy (and reaches the fault point) before the other
    processes = [hub.process("doomed", fault=f"{point}:kill:12")]
    try:
        for key in keys:
            await hub.client.signal_entity(eid("account", key), "deposit", 100)
        transfers: dict[str, dict[str, Any]] = {}
        for _ in range(12):
            src, dst = rng.sample(keys, 2)
            args = move(src, dst, rng.randrange(30, 81))
            transfers[await hub.client.start_new("transfer", client_input=args)] = args
        processes.append(hub.process("steady"))
        code = await asyncio.to_thread(processes[0].wait, 30)
        assert code == -signal.SIGKILL, f"worker exited with {code}:\n{processes[0].log_tail()}"
        statuses = [await hub.client.get_status(i) for i in transfers]
        unfinished = sum(1 for s in statuses if s is None or not s.runtime_status.is_terminal)
        assert unfinished, "the kill came after every transfer had finished"
        processes.append(hub.process("restarted"))
        elapsed = await wait_all(hub.client, list(transfers), RECOVERY_BOUND)
        for iid, args in transfers.items():
            status = await hub.client.get_status(iid)
            assert status is not None and status.runtime_status == Status.Completed, (iid, status)
            assert status.output in (0, args["amount"]), (args, status.output)
            assert history_problems(await hub.backend.get_history(iid)) == [], iid
        assert await leftovers(hub.backend, [*transfers, *(f"@account@{k}" for k in keys)], 15) == []
        final = await balances(hub.client, keys)  # every entity outbox (and projection) is done
        assert sum(final.values()) == 100 * len(keys) and min(final.values()) >= 0, final
        await assert_unlocked(hub.backend, keys)
    finally:
        for process in processes:
            process.stop()
    print(
        f"\n{point}:kill amid 12 transfers: {unfinished} unfinished at the kill, all done {elapsed:.1f}s "
        f"after the restart; balances {final}"
    )


async def test_ended_orchestrations_leave_entities_unlocked(hub: EntityHub) -> None:
    """An orchestration terminated while it holds a lock or waits for one (at the first or a later
    entity of its lock set), or failing inside its critical section, leaves no entity locked."""
    a, b = eid("account", "a"), eid("account", "b")
    backend = hub.backend_for_worker()
    try:
        async with hub.worker(backend):
            for entity in (a, b):
                await hub.client.signal_entity(entity, "deposit", 50)
                await state_becomes(hub.client, entity, {"balance": 50})

            async def lock_of(entity: df.EntityId) -> dict[str, Any] | None:
                return (await scheduler_state(hub.backend, entity)).get("lock")

            async def owner_is(entity: df.EntityId, iid: str) -> bool:
                lock = await lock_of(entity)
                return lock is not None and lock["owner"] == iid

            async def waits_at(entity: df.EntityId, iid: str) -> bool:
                """``iid``'s lock request is queued at ``entity``."""
                queue = (await scheduler_state(hub.backend, entity)).get("queue", [])
                return any(r.get("kind") == "lock" and r.get("parent") == iid for r in queue)

            # 1. holder locks b; waiter locks a and then waits at b
            holder = await hub.client.start_new("hold_lock", client_input=["b"])
            await eventually(lambda: owner_is(b, holder), what="holder locks b")
            waiter = await hub.client.start_new("transfer", client_input=move("a", "b", 10))
            await eventually(lambda: owner_is(a, waiter), what="waiter locks a")

            await eventually(lambda: waits_at(b, waiter), what="waiter queued at b")
            # 2. terminate the waiter (it holds a, waits for b), then the holder (holds b)
            await hub.client.terminate(waiter, "stop waiting")
            assert (await hub.client.wait_for_completion(waiter, 10)).runtime_status == Status.Terminated
            await eventually(lambda: _no_lock(hub.backend, a), what="a released by the terminated waiter")
            assert await owner_is(b, holder)
            await hub.client.terminate(holder, "stop holding")
            assert (await hub.client.wait_for_completion(holder, 10)).runtime_status == Status.Terminated
            await eventually(lambda: _no_lock(hub.backend, b), what="b released")
            # 3. a later transfer gets both locks
            later = await hub.client.start_new("transfer", client_input=move("a", "b", 10))
            status = await hub.client.wait_for_completion(later, 15)
            assert (status.runtime_status, status.output) == (Status.Completed, 10)
            # 4. a holder of both locks terminated inside its critical section
            both = await hub.client.start_new("hold_lock", client_input=["a", "b"])
            await eventually(lambda: owner_is(b, both), what="holder locks a and b")
            await hub.client.terminate(both, "stop holding both")
            back = await hub.client.start_new("transfer", client_input=move("b", "a", 5))
            status = await hub.client.wait_for_completion(back, 15)
            assert (status.runtime_status, status.output) == (Status.Completed, 5)
            await balances_become(hub.client, {"a": 45, "b": 55})
            # 5. a waiter queued at the first entity of its lock set, terminated, then its holder
            first = await hub.client.start_new("hold_lock", client_input=["a"])
            await eventually(lambda: owner_is(a, first), what="holder locks a")
            queued = await hub.client.start_new("transfer", client_input=move("a", "b", 10))

            await eventually(lambda: waits_at(a, queued), what="waiter queued at a")
            await hub.client.terminate(queued, "stop waiting at a")
            assert (await hub.client.wait_for_completion(queued, 10)).runtime_status == Status.Terminated
            assert await owner_is(a, first)
            await hub.client.terminate(first, "stop holding a")
            await assert_unlocked(hub.backend, ["a", "b"])
            # 6. an orchestration failing inside its critical section
            failing = await hub.client.start_new("fail_in_lock", client_input=["a", "b"])
            status = await hub.client.wait_for_completion(failing, 15)
            assert status.runtime_status == Status.Failed, status.output
            after = await hub.client.start_new("transfer", client_input=move("a", "b", 5))
            status = await hub.client.wait_for_completion(after, 15)
            assert (status.runtime_status, status.output) == (Status.Completed, 5)
            await balances_become(hub.client, {"a": 40, "b": 60})
            await assert_unlocked(hub.backend, ["a", "b"])
            iids = [holder, waiter, later, both, back, first, queued, failing, after]
            iids += ["@account@a", "@account@b"]
            assert await leftovers(hub.backend, iids, 10) == []
    finally:
        await backend.close()


async def _no_lock(backend: AzureBackend, entity: df.EntityId) -> bool:
    return "lock" not in await scheduler_state(backend, entity)
