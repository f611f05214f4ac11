"""The control plane of a running proxy: everything that changes it while it serves.

Reload, deploy and the route commands all end the same way: a new routing table
swapped into the engine in one assignment (held requests are routed again
against it by the core), health monitors matched to the new table, upstreams
that no route uses any more drained in the background, and the runtime state
written to the state file. Reloads and deploys run one at a time; route
commands only touch a ``RouteState``, which outlives every table.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastpause import _core, statefile, systemd
from fastpause.accesslog import AccessLog
from fastpause.commands import (
    Command,
    Install,
    Outcome,
    Snapshot,
    UnknownRoute,
    Verdict,
    apply,
    mode_command,
    route_of,
)
from fastpause.config import (
    Address,
    Config,
    ConfigError,
    Overrides,
    RouteConfig,
    load,
    parse_url_address,
    unverified_upstreams,
)
from fastpause.console import complain, plural, say
from fastpause.deploy import (
    DEFAULT_HEALTH_PATH,
    Deploy,
    DeployFailed,
    Deployment,
    Event,
    apply_deployments,
    check_targets,
    resolve_targets,
)
from fastpause.health import Check, CheckSettings, HealthChecks
from fastpause.listeners import ListenError, Listeners, reason
from fastpause.router import build_table, dialed, resolve_upstreams, retired
from fastpause.statefile import RouteRuntime, RuntimeState, StateFileError
from fastpause.stats import Stats, collect, merge
from fastpause.tls import CertificateError, Certificates
from fastpause.workers import Start, WorkerPool, share_limits

NO_CONFIG_FILE = "no config file to reload; start with --config or pass one"
# The core has no "upstream idle" event, so a drain looks at ``Upstream.active``
# this often; it only runs while an upstream is being retired.
DRAIN_POLL_INTERVAL = 0.05


class ReloadError(Exception):
    """A reload that was refused; the previous config keeps running."""


@dataclass(frozen=True)
class Reloaded:
    """A reload that took effect."""

    path: str
    routes: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Published:
    """What the workers answered to a new snapshot: exchanges left on the upstreams it
    retired, the held requests it released per route, the workers that failed it."""

    in_flight: int = 0
    held: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Startup:
    """What the proxy starts with: the first table and the deployments restored into it."""

    table: _core.RoutingTable
    deployments: dict[str, Deployment]


def start_table(config: Config, handed: RuntimeState | None = None) -> Startup:
    """Build the first routing table, with what the state file restores (or the
    runtime state ``handed`` over by the process this one replaces).

    Blocking (it resolves names): called before the event loop starts. A
    ``ConfigError`` here stops the start; a state file problem does not.
    """
    saved = handed if handed is not None else _read_state_file(config.state_file)
    source = "the process it replaces" if handed is not None else config.state_file
    routes = saved.routes if saved is not None else {}
    effective, deployments, notes = apply_deployments(config, _saved_deployments(config, routes))
    resolved = resolve_upstreams(config)
    unresolvable = set()
    for name, deployment in deployments.items():
        try:
            resolved |= resolve_targets(deployment.upstreams)
        except DeployFailed as error:
            notes.append(f"route {name}: not restoring the deploy: {error}")
            unresolvable.add(name)
    if unresolvable:
        deployments = {n: d for n, d in deployments.items() if n not in unresolvable}
        effective, deployments, _ = apply_deployments(config, deployments)
    for note in notes:
        say(note)
    table = build_table(effective, resolved=resolved)
    for route in table.routes:
        if route.name in routes:
            _restore_mode(route.state, routes[route.name])
        restored = _describe_restored(route, route.name in deployments)
        if restored:
            say(f"route {route.name}: restored from {source}: {restored}")
    return Startup(table, deployments)


class ControlPlane:
    """The running proxy's config, table, listeners, health checks and runtime state."""

    def __init__(
        self,
        engine: _core.Engine,
        config: Config,
        *,
        config_path: str | None,
        overrides: Overrides,
        listeners: Listeners,
        access_log: AccessLog | None,
        deployments: dict[str, Deployment],
    ) -> None:
        self.engine = engine
        self.config = config
        self.listeners = listeners
        self.access_log = access_log
        self._config_path = config_path
        self._overrides = overrides
        self._deployments = deployments
        # The config the routing table is built from: the file's, with the deploys.
        self._effective = apply_deployments(config, deployments)[0]
        self._lock = asyncio.Lock()
        self._health = HealthChecks(self._on_verdict)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[_core.Upstream] = set()
        # With workers, ``engine`` serves no connection: it is the control plane's copy
        # of the routing table (modes, health verdicts), and every change to it is
        # sent to the workers, which serve.
        self.workers: WorkerPool | None = None
        # ``fastpause upgrade``, set by the server; while one runs, changes are refused.
        self.upgrader: Callable[[Callable[[Event], None]], Awaitable[None]] | None = None
        self.upgrading = False
        # One thread, so state files are written in the order the changes happened.
        self._state_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-file")

    def start(self) -> None:
        """Start the health checks of the first table."""
        self._update_health()

    def close(self) -> None:
        """Stop checking, cut what is still draining (the end of a shutdown)."""
        self._health.stop()
        for task in self._tasks:
            task.cancel()
        for upstream in self._retiring:
            upstream.close_all()
        self._state_writer.shutdown(wait=True)

    # ------------------------------------------------------------ route commands

    async def command(self, command: Command) -> Outcome:
        """Apply a route command to the current table (and every worker's), then record
        the new state. Counts in the outcome are the whole proxy's."""
        outcome = apply(command, self.engine.table)
        if self.workers is not None:
            outcomes, failed = await self.workers.command(command)
            for key in ("released", "answered"):
                if key in outcome:
                    outcome[key] = sum(part[key] for part in outcomes)
            if failed:
                outcome["workers_failed"] = failed
        await self.save_state()
        return outcome

    async def drain(self, route: str, timeout: float) -> tuple[bool, int]:
        """Wait until nothing of ``route`` is in flight (in any worker), at most
        ``timeout``: (drained, requests still in flight)."""
        state = self.route_state(route)
        if self.workers is None:
            return await _drain(state, timeout), state.in_flight
        answers = await self.workers.broadcast("drain", {"route": route, "timeout": timeout})
        drained = not answers.failed and all(part["drained"] for part in answers.values)
        return drained, sum(part["in_flight"] for part in answers.values)

    async def stats(self) -> Stats:
        """Every counter of the proxy, summed over its workers."""
        parts = [collect(self.engine)]
        if self.workers is not None:
            parts[0]["upstreams"] = []  # the supervisor's own pools never connect
            parts += await self.workers.stats()
        return merge(parts, self.engine.table)

    # ------------------------------------------------------------ workers

    def start_state(self) -> Start:
        """What a new worker starts from: the snapshot and every route's mode now."""
        return Start(
            self.snapshot(),
            [mode_command(route.state) for route in self.engine.table.routes],
        )

    def snapshot(self) -> Snapshot:
        """The routing snapshot as plain values: a worker builds the same table from it
        without resolving a name, with the health verdicts of this one."""
        assert self.workers is not None
        table = self.engine.table
        return Snapshot(
            share_limits(self._effective, self.workers.count),
            dialed(table),
            tuple(
                (route.name, upstream.address)
                for route in table.routes
                for upstream in route.upstreams
                if not upstream.healthy
            ),
            self.workers.region.columns([route.name for route in table.routes]),
        )

    async def _publish(self, *, close_tunnels: bool = False) -> Published:
        """Send the current snapshot to every worker and sum up their answers."""
        if self.workers is None:
            return Published()
        answers = await self.workers.send(Install(self.snapshot(), close_tunnels))
        held: dict[str, int] = {}
        for part in answers.values:
            for route, count in part["held"].items():
                held[route] = held.get(route, 0) + count
        in_flight = sum(part["in_flight"] for part in answers.values)
        return Published(in_flight, held, answers.failed)

    def route_state(self, name: str) -> _core.RouteState:
        return route_of(self.engine.table, name).state

    def upstream_weights(self, name: str) -> list[int]:
        """The weights of route ``name``'s upstreams in the current table, in order."""
        for route in self._effective.routes:
            if route.name == name:
                return route.upstream_weights()
        raise UnknownRoute(name)

    # ------------------------------------------------------------ connection limit

    def on_capacity(self, at_capacity: bool) -> None:
        """The data plane's ``max_connections`` signal: stop accepting on every listener
        at the limit (new clients wait in the listen backlog), accept again once the
        open connections are below 90% of it."""
        if at_capacity == (not self.listeners.accepting):
            return  # a reload already acted on it (see ``_set_connection_limit``)
        if at_capacity:
            self.listeners.stop_accepting()
            say(f"connection limit {self.engine.max_connections} reached: not accepting")
        else:
            self.listeners.accept_again()
            say("accepting connections again")

    def _set_connection_limit(self, limit: int) -> None:
        """A reload's ``max_connections``: the data plane re-checks the open connections
        against it at once and signals ``on_capacity`` if that flips."""
        self.engine.max_connections = limit

    def exclusive(self) -> asyncio.Lock:
        """Held while nothing else may change the routing: a reload, a deploy's
        switch, an upgrade's handover (which would otherwise miss a change)."""
        return self._lock

    # ------------------------------------------------------------ reload

    async def reload(self, path: str | None = None) -> Reloaded:
        """Read the config again (or ``path``) and put it in force, or change nothing.

        Returns once the new table is in place; upstreams it no longer uses drain
        in the background.
        """
        systemd.reloading()
        try:
            async with self._lock:
                reloaded = await self._reload(path)
        except ReloadError as error:
            complain(f"reload failed: {error}; still serving the previous config")
            raise
        finally:
            systemd.ready(f"serving on {', '.join(self.listeners.urls())}")
        for note in reloaded.notes:
            say(note)
        for warning in unverified_upstreams(self.config):
            complain(warning)
        say(f"reloaded {reloaded.path}: {plural(reloaded.routes, 'route')}")
        return reloaded

    async def _reload(self, path: str | None) -> Reloaded:
        source = path or self._config_path
        if source is None:
            raise ReloadError(NO_CONFIG_FILE)
        loop = asyncio.get_running_loop()
        try:
            config, resolved = await loop.run_in_executor(None, self._read_config, source)
        except ConfigError as error:
            raise ReloadError(str(error)) from None
        self._check_admin_unchanged(config)
        effective, deployments, notes = apply_deployments(config, self._deployments)
        old = self.engine.table
        table = build_table(effective, previous=old, resolved={**dialed(old), **resolved})
        try:
            certificates = Certificates(config)  # renewed files are read again
        except CertificateError as error:
            raise ReloadError(f"{config.source}: certificates: {error}") from None
        try:
            change = await self.listeners.prepare(config.listen)
        except ListenError as error:
            raise ReloadError(str(error)) from None
        try:
            access_log = self._reopened_access_log(config)
        except OSError as error:
            self.listeners.abandon(change)
            problem = f"cannot open access log {config.access_log}: {reason(error)}"
            raise ReloadError(problem) from None
        # Nothing below can fail: the reload happens.
        self.engine.table = table
        if self.listeners.tls is not None:
            self.listeners.tls.install(certificates, config)
        opened, closed = self.listeners.commit(change)
        self._switch_access_log(access_log)
        self.engine.max_held_bytes = config.max_held_bytes
        self._set_connection_limit(config.max_connections)
        if self.workers is not None:
            self.workers.timeout = config.worker_timeout
        self.config = config
        self._config_path = source
        self._deployments = deployments
        self._effective = effective
        self._update_health()
        self._retire_in_background(retired(old, table), config.drain_timeout)
        failed = (await self._publish()).failed
        if self.workers is not None and (opened or closed):
            failed += (await self.workers.listen()).failed
        await self.save_state()
        notes += [f"listening on {url}" for url in opened]
        notes += [f"no longer listening on {url}" for url in closed]
        notes += [f"not applied: {problem}" for problem in failed]
        return Reloaded(source, len(table.routes), tuple(notes))

    def _read_config(self, path: str) -> tuple[Config, dict[str, str]]:
        """Load, validate and resolve ``path`` (blocking: runs in an executor)."""
        config = load(path)
        config = self._overrides.apply(config)
        return config, resolve_upstreams(config)

    def _check_admin_unchanged(self, config: Config) -> None:
        """The admin API is how the reload was asked for; it changes only by a restart."""
        if config.admin != self.config.admin:
            raise ReloadError(
                f"{config.source}: admin: the admin address cannot change by reload "
                f"(running on {_describe_admin(self.config)}, the file says "
                f"{_describe_admin(config)}); restart fastpause to change it"
            )
        if config.workers != self.config.workers:
            raise ReloadError(
                f"{config.source}: workers: the number of workers cannot change by reload "
                f"(running {self.config.workers}, the file says {config.workers}); restart "
                "fastpause to change it"
            )
        if config.admin_token != self.config.admin_token:
            raise ReloadError(
                f"{config.source}: admin_token: the admin token cannot change by reload; "
                "restart fastpause to change it"
            )

    def _reopened_access_log(self, config: Config) -> AccessLog | None:
        """The access log for ``config``: the current one unless its target or format changed."""
        current = (self.config.access_log, self.config.access_log_format)
        if (config.access_log, config.access_log_format) == current:
            return self.access_log
        if config.access_log is None:
            return None
        return AccessLog.open(config.access_log, config.access_log_format)

    def _switch_access_log(self, access_log: AccessLog | None) -> None:
        if access_log is self.access_log:
            return
        previous, self.access_log = self.access_log, access_log
        self.engine.access_log = access_log
        if access_log is not None:
            access_log.start(asyncio.get_running_loop())
        if previous is not None:
            previous.close()

    # ------------------------------------------------------------ deploy

    def start_deploy(self, request: Deploy, emit: Callable[[Event], None]) -> asyncio.Task[bool]:
        """Run ``deploy`` as a task of its own: it finishes even if its caller goes away,
        and a shutdown cancels it (what it was draining is then cut)."""
        task = asyncio.get_running_loop().create_task(self.deploy(request, emit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def deploy(self, request: Deploy, emit: Callable[[Event], None]) -> bool:
        """Check the new targets, switch the route to them, drain the old ones.

        Progress goes to ``emit`` as it happens; the last event is ``done`` (True
        returned) or ``failed`` (False, and the route is exactly as it was).
        """
        try:
            async with self._lock:
                old, new, published = await self._switch_route(request, emit)
        except DeployFailed as error:
            complain(f"deploy of route {request.route} failed: {error}")
            emit({"event": "failed", "error": str(error)})
            return False
        leaving = retired(old, new)
        if request.close_tunnels:
            for upstream in leaving:
                upstream.close_tunnels()
        emit(
            {
                "event": "draining",
                "upstreams": [upstream.address for upstream in leaving],
                "in_flight": published.in_flight + sum(upstream.active for upstream in leaving),
                "tunnels_closed": request.close_tunnels,
            }
            | ({"workers_failed": published.failed} if published.failed else {})
        )
        drained = await self._retire(leaving, request.drain_timeout)
        if self.workers is not None:
            answers = await self.workers.broadcast("retired", {})
            drained = drained and not answers.failed and all(a["drained"] for a in answers.values)
        emit({"event": "done", "drained": drained})
        return True

    async def _switch_route(
        self, request: Deploy, emit: Callable[[Event], None]
    ) -> tuple[_core.RoutingTable, _core.RoutingTable, Published]:
        """Everything up to the swap, in every worker; ``DeployFailed`` means nothing
        changed. Returns the tables and what the workers answered."""
        route_config = self._route_config(request.route)
        settings = _check_settings(route_config, request.health_path)
        loop = asyncio.get_running_loop()
        resolved = await loop.run_in_executor(None, resolve_targets, request.to)
        await self._check_targets(request, resolved, settings, emit)
        deployments = dict(self._deployments)
        if request.to == route_config.upstreams:  # back to the config: no override
            deployments.pop(request.route, None)
        else:
            deployments[request.route] = Deployment(request.to, route_config.upstreams)
        effective, deployments, _ = apply_deployments(self.config, deployments)
        old = self.engine.table
        previous = route_of(old, request.route)
        held = previous.state.held if previous.state.mode_name == "running" else 0
        new = build_table(effective, previous=old, resolved={**dialed(old), **resolved})
        self.engine.table = new
        self._deployments = deployments
        self._effective = effective
        self._update_health()
        published = await self._publish(close_tunnels=request.close_tunnels)
        if self.workers is not None:
            held = published.held.get(request.route, 0)
        await self.save_state()
        targets = route_of(new, request.route).upstreams
        say(f"route {request.route} -> {', '.join(u.address for u in targets)} (deployed)")
        emit(
            {
                "event": "switched",
                "from": [upstream.address for upstream in previous.upstreams],
                "to": [upstream.address for upstream in targets],
                "held_released": held,
            }
        )
        return old, new, published

    async def _check_targets(
        self,
        request: Deploy,
        resolved: dict[str, str],
        settings: CheckSettings,
        emit: Callable[[Event], None],
    ) -> None:
        """Health-check the new targets in parallel; ``DeployFailed`` names each that failed."""
        emit(
            {
                "event": "checking",
                "targets": [str(target) for target in request.to],
                "health_path": settings.path,
            }
        )
        problems: dict[Address, str] = {}
        async for target, problem in check_targets(
            request.to, resolved, settings, request.deploy_timeout
        ):
            if problem is None:
                emit({"event": "healthy", "target": str(target)})
            else:
                problems[target] = problem
        if problems:
            raise DeployFailed(
                "; ".join(
                    f"{target} did not pass the health check at {settings.path} within "
                    f"{request.deploy_timeout:g}s: {problems[target]}"
                    for target in request.to
                    if target in problems
                )
            )

    def _route_config(self, name: str) -> RouteConfig:
        for route in self.config.routes:
            if route.name == name:
                return route
        raise DeployFailed(str(UnknownRoute(name)))

    def has_route(self, name: str) -> bool:
        return any(route.name == name for route in self.engine.table.routes)

    # ------------------------------------------------------------ draining

    def _retire_in_background(self, upstreams: list[_core.Upstream], timeout: float) -> None:
        """Drain ``upstreams`` without making the caller wait (a reload returns at the swap)."""
        if not upstreams:
            return
        task = asyncio.get_running_loop().create_task(self._retire(upstreams, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retire(self, upstreams: list[_core.Upstream], timeout: float) -> bool:
        """Drain, wait for in-flight exchanges up to ``timeout``, then cut the rest.

        True when every exchange finished in time.
        """
        self._retiring.update(upstreams)
        try:
            return await retire(upstreams, timeout)
        finally:
            self._retiring.difference_update(upstreams)

    # ------------------------------------------------------------ health

    def _update_health(self) -> None:
        """Monitor every upstream of a route with a ``health_path``; trust the others."""
        settings = {route.name: route for route in self.config.routes}
        checks = []
        unchecked = []
        for route in self.engine.table.routes:
            route_config = settings[route.name]
            if route_config.health_path is None:
                unchecked += route.upstreams
                continue
            check_settings = _check_settings(route_config, route_config.health_path)
            checks += [Check(route.name, up, check_settings) for up in route.upstreams]
        self._health.update(checks)
        for upstream in unchecked:
            if not upstream.healthy:
                self.engine.set_upstream_health(upstream, True)

    def _on_verdict(self, check: Check, healthy: bool, problem: str | None) -> None:
        """Put a verdict in force, then say so: with workers, once every worker applied
        it (verdicts are sent in the order they came, each after the one before)."""
        verdict = Verdict(check.route, check.upstream.address, healthy)
        verdict.apply(self.engine)
        where = f"upstream {check.upstream.address} of route {check.route}"
        line = f"{where} is up" if healthy else f"{where} is down ({problem})"
        if self.workers is None:
            say(line)
            return
        sent = self.workers.send_soon(verdict)
        task = asyncio.get_running_loop().create_task(_say_when_sent(sent, line))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ state file

    async def save_state(self) -> None:
        """Write the runtime state when a state file is configured; a failure is reported,
        not raised: the change it records has already happened."""
        path = self.config.state_file
        if path is None:
            return
        state = self.runtime_state()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._state_writer, statefile.save, path, state)
        except StateFileError as error:
            complain(f"state file {error}")

    def runtime_state(self) -> RuntimeState:
        """Route modes and deployed targets: what a state file or a successor keeps."""
        routes = {}
        for route in self.engine.table.routes:
            state = route.state
            deployment = self._deployments.get(route.name)
            routes[route.name] = RouteRuntime(
                upstreams=_strings(deployment.upstreams) if deployment else None,
                config_upstreams=_strings(deployment.config_upstreams) if deployment else None,
                mode=state.mode_name,
                max_hold=state.max_hold,
                stop_message=state.stop_message,
            )
        return RuntimeState(routes)


def _read_state_file(path: str | None) -> RuntimeState | None:
    """The saved state; a file that cannot be used is reported and ignored."""
    if path is None:
        return None
    try:
        return statefile.load(path)
    except StateFileError as error:
        complain(f"ignoring state file {error}")
        return None


def _saved_deployments(config: Config, routes: dict[str, RouteRuntime]) -> dict[str, Deployment]:
    """The deployments the state file records for routes the config still has."""
    names = {route.name for route in config.routes}
    return {
        name: Deployment(_addresses(runtime.upstreams), _addresses(runtime.config_upstreams))
        for name, runtime in routes.items()
        if name in names and runtime.upstreams is not None and runtime.config_upstreams is not None
    }


def _describe_restored(route: _core.Route, deployed: bool) -> str:
    """What the state file changed about ``route``, for the start-up lines ("" if nothing)."""
    changes = []
    if deployed:
        changes.append(f"deployed to {', '.join(u.address for u in route.upstreams)}")
    if route.state.mode_name != "running":
        changes.append(route.state.mode_name)
    return ", ".join(changes)


def _restore_mode(state: _core.RouteState, runtime: RouteRuntime) -> None:
    if runtime.mode == "paused":
        state.pause(runtime.max_hold)
    elif runtime.mode == "stopped":
        state.stop(runtime.stop_message)


def _check_settings(route: RouteConfig, path: str | None) -> CheckSettings:
    return CheckSettings(
        path=path or route.health_path or DEFAULT_HEALTH_PATH,
        interval=route.health_interval,
        timeout=route.health_timeout,
        passes=route.health_passes,
        fails=route.health_fails,
        host_header=route.host_header,
        ca=route.ca,
        tls_verify=route.tls_verify,
        tls_server_name=route.tls_server_name,
    )


async def retire(upstreams: list[_core.Upstream], timeout: float) -> bool:
    """Drain ``upstreams`` (no new exchanges), wait for in-flight ones up to ``timeout``,
    then cut the rest. True when every exchange finished in time."""
    for upstream in upstreams:
        upstream.drain()
    try:
        return await _wait_idle(upstreams, timeout)
    finally:
        for upstream in upstreams:
            upstream.close_all()


async def _wait_idle(upstreams: Iterable[_core.Upstream], timeout: float) -> bool:
    """True once no exchange is in progress on ``upstreams``; False at ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(upstream.active for upstream in upstreams):
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(DRAIN_POLL_INTERVAL, left))
    return True


async def _say_when_sent(sent: Awaitable[object], line: str) -> None:
    await sent
    say(line)


async def _drain(state: _core.RouteState, timeout: float) -> bool:
    """True once nothing of the route is in flight, False if ``timeout`` passes first."""
    if state.in_flight == 0:
        return True
    try:
        await asyncio.wait_for(state.wait_drained(), timeout)
    except TimeoutError:
        return False
    return True


def _strings(addresses: Iterable[Address]) -> tuple[str, ...]:
    return tuple(str(address) for address in addresses)


def _addresses(texts: Iterable[str] | None) -> tuple[Address, ...]:
    """Addresses the state file recorded (``statefile`` checked their syntax)."""
    return tuple(parse_url_address(text) for text in texts or ())


def _describe_admin(config: Config) -> str:
    return "off" if config.admin is None else str(config.admin)
