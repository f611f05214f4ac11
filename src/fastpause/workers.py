"""The supervisor's worker processes: started, told every change, replaced when lost.

With ``workers = N`` (N > 1) the process ``fastpause run`` starts is a supervisor:
it binds the listeners, runs the control plane (config, admin API, health checks,
state file, deploys) and N worker processes (``fastpause.worker``) serve the
data plane on the listening sockets it sends them. Every change is a message to
every worker, and the caller gets its answer only once each live worker has
applied it (docs/ARCHITECTURE.md, "Process model").

A worker that exits is replaced at once with the current snapshot and route
modes (a paused route stays paused in the new worker); one that does not answer
within ``worker_timeout`` is reported in the answer, killed and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastpause.commands import Command, Outcome, Snapshot
from fastpause.config import Config
from fastpause.console import complain, say
from fastpause.shared_counts import SharedRegion
from fastpause.stats import Stats, retire
from fastpause.upgrade import FDS_PER_FRAME, Connection, pack_connections, unpack_connections
from fastpause.wire import Channel, encode

# Interpreter start and imports, then the first snapshot.
START_TIMEOUT = 30.0
# A worker that dies this soon after starting is crashing: wait before the next try.
CRASH_WINDOW = 1.0
MAX_BACKOFF = 5.0


class WorkerLost(Exception):
    """A worker did not answer: it exited or stopped responding."""


@dataclass(frozen=True)
class Start:
    """What a new worker starts from: the current snapshot and every route's mode."""

    snapshot: Snapshot
    modes: list[Command]


@dataclass
class Answers:
    """A message's answers from every live worker, and the workers that failed it."""

    values: list[Any]
    failed: list[str]
    answered: list[WorkerProcess] = field(default_factory=list)  # who gave each value


def share_limits(config: Config, workers: int) -> Config:
    """``max_connections`` divided between ``workers``, rounded up: the real total can
    exceed it by at most ``workers - 1``. (A worker at its part stops accepting and the
    kernel spreads connections evenly; ``max_held`` and ``max_held_bytes`` are checked
    against every worker's counts instead, ``fastpause.shared_counts``.)"""
    return replace(config, max_connections=math.ceil(config.max_connections / workers))


class WorkerProcess:
    """One worker: its process, its command channel and the answers it owes."""

    def __init__(
        self,
        index: int,
        process: asyncio.subprocess.Process,
        sock: socket.socket,
        on_event: Callable[[WorkerProcess, dict[str, Any], list[int]], None],
    ):
        self.index = index
        self._on_event = on_event
        self.process = process
        self.last_stats: Stats | None = None  # what it had counted when last asked
        # stopping: its requests are done (it may still relay TLS connections), or it exited
        self.drained = asyncio.Event()
        self.started = asyncio.get_running_loop().time()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._channel = Channel(sock, self._on_frame, self._on_close)

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"

    async def request(
        self,
        op: str,
        args: dict[str, Any],
        fds: list[int],
        timeout: float,
    ) -> Any:
        """Send one message and wait for its answer; ``WorkerLost`` if none comes."""
        ident = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            async with asyncio.timeout(timeout):
                await self._channel.send({"id": ident, "op": op, "args": args}, fds)
                reply = await answer
        except TimeoutError:
            raise WorkerLost(f"{self.name} did not answer within {timeout:g}s") from None
        except OSError:  # the channel closed under the send (ConnectionError, EBADF)
            raise WorkerLost(f"{self.name} is gone") from None
        finally:
            self._waiting.pop(ident, None)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply.get("ok")

    async def tell(self, op: str) -> None:
        """Send one message that needs no answer (the worker may be exiting)."""
        with contextlib.suppress(OSError):
            await self._channel.send({"op": op, "args": {}})

    def _on_frame(self, message: dict[str, Any], fds: list[int]) -> None:
        if "event" in message:
            self._on_event(self, message, fds)
            return
        for fd in fds:  # answers carry none
            os.close(fd)
        answer = self._waiting.get(message.get("id", 0))
        if answer is not None and not answer.done():
            answer.set_result(message)

    def _on_close(self) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ConnectionResetError("the worker closed its channel"))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def close(self) -> None:
        self._channel.close()


class WorkerPool:
    """N workers fed the same messages; ``start_state`` says what a new one starts from."""

    def __init__(
        self,
        count: int,
        start_state: Callable[[], Start],
        sockets: Callable[[int], list[tuple[socket.socket, bool]]],
        timeout: float,
    ) -> None:
        self.count = count
        # A worker answers from its event loop; one that has not answered in this long
        # is stuck (or the machine is), and holding the operator longer helps nobody.
        self.timeout = timeout
        self.restarts = 0
        self._departed: Stats | None = None  # what the workers gone had counted
        self._start_state = start_state
        self._sockets = sockets
        self._live: dict[int, WorkerProcess] = {}
        self._watchers: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.region = SharedRegion(count)
        # During an upgrade: where connections that go idle in a worker are sent.
        self.on_connections: Callable[[list[Connection]], None] | None = None

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start every worker; raises ``WorkerLost`` if one cannot start."""
        workers = await asyncio.gather(*(self._spawn(index) for index in range(self.count)))
        for worker in workers:
            self._watch(worker)

    async def _spawn(self, index: int) -> WorkerProcess:
        """A new worker process, sent its start state; returns once it serves."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fastpause.worker",
                str(theirs.fileno()),
                str(os.getpid()),
                str(index),
                pass_fds=[theirs.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        worker = WorkerProcess(index, process, ours, self._on_event)
        state = self._start_state()  # read now: messages sent after this one follow it
        self._live[index] = worker
        sockets = self._sockets(index)
        try:
            await worker.request(
                "start",
                {
                    "snapshot": encode(state.snapshot),
                    "modes": encode(state.modes),
                    "workers": self.count,
                    "tls": [tls for _, tls in sockets],
                },
                [sock.fileno() for sock, _ in sockets] + [self.region.fd],
                timeout=START_TIMEOUT,
            )
        except (WorkerLost, ValueError) as error:
            self._live.pop(index, None)
            worker.kill()
            raise WorkerLost(f"worker {index} could not start: {error}") from None
        return worker

    def _watch(self, worker: WorkerProcess) -> None:
        task = asyncio.get_running_loop().create_task(self._supervise(worker))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _supervise(self, worker: WorkerProcess) -> None:
        """Wait for ``worker`` to exit; unless the proxy is stopping, replace it."""
        status = await worker.process.wait()
        worker.drained.set()
        worker.close()
        if self._live.get(worker.index) is worker:
            del self._live[worker.index]
        if worker.last_stats is not None:
            self._departed = retire(self._departed, worker.last_stats)
        self.region.clear_row(worker.index)
        if self._stopping:
            return
        lived = asyncio.get_running_loop().time() - worker.started
        complain(
            f"{worker.name} {_describe_exit(status)}; its client connections were lost; "
            "starting a replacement"
        )
        self.restarts += 1
        delay = 0.0 if lived > CRASH_WINDOW else min(MAX_BACKOFF, CRASH_WINDOW * 2)
        while not self._stopping:
            if delay:
                await asyncio.sleep(delay)
            try:
                replacement = await self._spawn(worker.index)
            except WorkerLost as error:
                complain(str(error))
                delay = min(MAX_BACKOFF, max(delay * 2, CRASH_WINDOW))
                continue
            say(f"{replacement.name} started in place of pid {worker.process.pid}")
            self._watch(replacement)
            return

    async def stop_accepting(self) -> int:
        """The start of a graceful stop: every worker closes its listeners and its idle
        connections, then drains on its own (``cut`` ends that early). Returns how many
        connections are left to finish; when it returns, no worker accepts."""
        self._stopping = True
        # a worker already gone (a signal to the whole process group reached it
        # first) accepts nothing any more: not a failure
        workers = list(self._live.values())
        answers = await self._broadcast_to(workers, "stop_accepting", {}, quiet=True)
        return sum(answer["connections"] for answer in answers.values)

    async def terminate(self) -> None:
        """SIGTERM every worker (a start that failed: nothing is served yet) and wait."""
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        await self.wait_stopped()

    async def wait_drained(self) -> None:
        """After ``stop_accepting``: until every worker has finished its requests (or
        exited); TLS connections an upgrade relays may keep them running longer."""
        for worker in list(self._live.values()):
            await worker.drained.wait()

    async def wait_stopped(self) -> None:
        """Wait until every worker has exited."""
        if self._watchers:
            await asyncio.wait(list(self._watchers))
        self.region.close()

    def cut(self) -> None:
        """Every worker stops waiting for its connections and closes them now.

        A message, not a second SIGTERM: two SIGTERMs that reach a worker before it
        handles the first are one signal to it, and it would go on waiting.
        """
        for worker in self._live.values():
            task = asyncio.get_running_loop().create_task(worker.tell("cut"))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

    def signal_all(self, signum: int) -> None:
        for worker in list(self._live.values()):
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._live.values()]

    # ------------------------------------------------------------ messages

    async def broadcast(
        self,
        op: str,
        args: dict[str, Any],
        fds: Callable[[WorkerProcess], list[int]] | None = None,
    ) -> Answers:
        """Send a message to every live worker and wait for every answer.

        A worker that fails it is named in ``failed``; one that does not answer in
        time is killed, so a replacement starts from the state the others have.
        """
        return await self._broadcast_to(list(self._live.values()), op, args, fds)

    async def _broadcast_to(
        self,
        workers: list[WorkerProcess],
        op: str,
        args: dict[str, Any],
        fds: Callable[[WorkerProcess], list[int]] | None = None,
        *,
        quiet: bool = False,
    ) -> Answers:
        """``broadcast`` to ``workers``; ``quiet``: a worker lost is not complained of."""
        results = await asyncio.gather(
            *(
                worker.request(op, args, fds(worker) if fds else [], self.timeout)
                for worker in workers
            ),
            return_exceptions=True,
        )
        answers = Answers([], [])
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, WorkerLost):
                if not quiet:
                    answers.failed.append(str(result))
                worker.kill()
            elif isinstance(result, ValueError):
                answers.failed.append(f"{worker.name}: {result}")
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.values.append(result)
                answers.answered.append(worker)
        for problem in answers.failed:
            complain(problem)
        return answers

    async def command(self, command: Command) -> tuple[list[Outcome], list[str]]:
        """A route command, applied by every worker to its part of the proxy."""
        answers = await self.send(command.share(self.count))
        return answers.values, answers.failed

    async def stats(self) -> list[Stats]:
        """Every live worker's counters, and what the workers gone had counted when
        last asked: the proxy's counters never go back when a worker is replaced."""
        answers = await self.broadcast("stats", {})
        for worker, part in zip(answers.answered, answers.values, strict=True):
            worker.last_stats = part
        return answers.values + ([self._departed] if self._departed else [])

    def details(self) -> list[dict[str, Any]]:
        """Each live worker as of the last ``stats``: what it serves and holds now."""
        now = asyncio.get_running_loop().time()
        details = []
        for index, worker in sorted(self._live.items()):
            part = worker.last_stats or {"engine": {}, "routes": {}}
            details.append(
                {
                    "index": index,
                    "pid": worker.process.pid,
                    "uptime_seconds": round(now - worker.started, 3),
                    "connections": part["engine"].get("connections", 0),
                    "in_flight": part["engine"].get("in_flight", 0),
                    "held": sum(route["held"] for route in part["routes"].values()),
                    "requests": part["engine"].get("requests_total", 0),
                }
            )
        return details

    async def hand_over(self) -> tuple[int, int, int]:
        """Every worker stops accepting and gives away the connections a successor can
        take (``Engine.hand_over``) as events that reach ``on_connections``, then
        those that go idle there later. Returns how many held requests and idle
        connections went, and how many held requests stay."""
        answers = await self.broadcast("hand_over", {})
        held, idle, stay = (
            sum(answer[key] for answer in answers.values) for key in ("held", "idle", "stay")
        )
        return held, idle, stay

    async def adopt(self, connections: list[Connection]) -> None:
        """Connections from the process this one replaces: each old worker's go to one
        of these workers (the same index, wrapped), in order, so a held queue keeps
        its order."""
        groups: dict[int, list[Connection]] = {}
        for connection in connections:
            groups.setdefault(connection.group % self.count, []).append(connection)
        try:
            for index, group in groups.items():
                worker = self._live.get(index) or next(iter(self._live.values()))
                for start in range(0, len(group), FDS_PER_FRAME):
                    entries, fds = pack_connections(group[start : start + FDS_PER_FRAME])
                    await worker.request("adopt", {"connections": entries}, fds, self.timeout)
        finally:
            for connection in connections:
                os.close(connection.fd)

    async def send(self, command: Any) -> Answers:
        """Any command (``fastpause.commands``), applied by every live worker."""
        return await self.broadcast("command", {"command": encode(command)})

    def send_soon(self, command: Any) -> asyncio.Task[Answers]:
        """A command sent now, in order with every other message; the task ends once
        every live worker applied it (a health verdict: nobody waits for it)."""
        return self._send_soon("command", {"command": encode(command)}, None)

    def _on_event(self, worker: WorkerProcess, event: dict[str, Any], fds: list[int]) -> None:
        """What a worker saw that the others act on: an upstream it reached or failed to
        reach (passive health is the whole proxy's, as in one process); during an
        upgrade, a connection that went idle there, for the new process."""
        if event["event"] == "connections" and self.on_connections is not None:
            self.on_connections(unpack_connections(event["connections"], fds))
            return
        for fd in fds:
            os.close(fd)
        if event["event"] == "drained":
            worker.drained.set()
        elif event["event"] in ("upstream_up", "upstream_down"):
            args = {key: value for key, value in event.items() if key != "event"}
            self._send_soon(event["event"], args, worker)

    def _send_soon(
        self, op: str, args: dict[str, Any], source: WorkerProcess | None
    ) -> asyncio.Task[Answers]:
        """Send to every live worker but ``source``, the caller not waiting: the task
        started now keeps the messages in the order of the calls."""
        workers = [worker for worker in self._live.values() if worker is not source]
        task = asyncio.get_running_loop().create_task(self._broadcast_to(workers, op, args))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return task

    async def listen(self) -> Answers:
        """The supervisor's listeners changed: every worker serves the new set."""
        return await self.broadcast(
            "listen",
            {"tls": [tls for _, tls in self._sockets(0)]},
            lambda worker: [sock.fileno() for sock, _ in self._sockets(worker.index)],
        )


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"
