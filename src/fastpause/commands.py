"""Route control actions as plain command objects.

Every control action is a small frozen dataclass applied to a route's
``RouteState`` by one function, ``apply``. Commands hold only plain values, so
the same objects are sent to every worker process (and could be to a fleet of
proxies) and applied there unchanged (docs/ARCHITECTURE.md, "Two planes, one boundary").

Each command is also its own declaration for callers: ``verb``, ``help`` and
``description`` name it in the admin API (``POST /routes/ROUTE/VERB``) and the
CLI (``fastpause VERB ROUTE``), and its fields' ``argument`` metadata is what
both accept (``fastpause.arguments``).
"""

import os
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

from fastpause import _core, arguments
from fastpause.arguments import DEFAULT_DRAIN_TIMEOUT, argument
from fastpause.config import Config
from fastpause.wire import plain

DEFAULT_MAX_HOLD = 30.0

# What a command reports back: plain values, ready to be JSON.
Outcome = dict[str, Any]


class UnknownRoute(LookupError):
    """A command named a route the current routing table does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no route named {name!r}")
        self.name = name


class Command(Protocol):
    """A control action for one route."""

    @property
    def route(self) -> str: ...

    def apply(self, state: _core.RouteState) -> Outcome: ...

    def share(self, workers: int) -> "Command":
        """What each of ``workers`` processes applies so that together they do this."""
        ...


@plain
@dataclass(frozen=True)
class Pause:
    """Hold new requests, each for at most ``max_hold`` seconds; in-flight ones finish
    (the caller waits up to ``drain_timeout`` for them)."""

    verb: ClassVar[str] = "pause"
    help: ClassVar[str] = "hold a route's new requests"
    description: ClassVar[str] = (
        "Hold new requests of ROUTE and wait until its in-flight requests finish."
    )

    route: str
    max_hold: float = argument(
        DEFAULT_MAX_HOLD,
        parse=arguments.duration(allow_zero=False),
        metavar="DURATION",
        help="answer 503 to a request held longer than this (default 30s)",
    )
    drain_timeout: float = argument(
        DEFAULT_DRAIN_TIMEOUT,
        parse=arguments.duration(allow_zero=True),
        metavar="DURATION",
        help="wait at most this long for in-flight requests (default 30s)",
    )

    def apply(self, state: _core.RouteState) -> Outcome:
        state.pause(self.max_hold)
        return {"route": self.route, "mode": state.mode_name}

    def share(self, workers: int) -> "Pause":
        return self


@plain
@dataclass(frozen=True)
class Resume:
    """Release held requests in arrival order, all at once or ``rate`` per second."""

    verb: ClassVar[str] = "resume"
    help: ClassVar[str] = "release a paused route's held requests"
    description: ClassVar[str] = (
        "Release the held requests of ROUTE in arrival order and serve normally."
    )

    route: str
    rate: float | None = argument(
        None,
        parse=arguments.rate,
        from_text=arguments.rate_text,
        metavar="N",
        help="release N held requests per second (default: all at once)",
    )

    def apply(self, state: _core.RouteState) -> Outcome:
        released = state.held
        state.resume(self.rate or 0.0)
        return {
            "route": self.route,
            "mode": state.mode_name,
            "released": released,
            "rate": self.rate,
        }

    def share(self, workers: int) -> "Resume":
        """Each worker releases its own queue: at 1/``workers`` of the rate, the whole
        proxy releases at the rate asked for."""
        return self if self.rate is None else replace(self, rate=self.rate / workers)


@plain
@dataclass(frozen=True)
class Stop:
    """Maintenance: answer held and new requests with 503, ``message`` and ``Retry-After``."""

    verb: ClassVar[str] = "stop"
    help: ClassVar[str] = "answer a route's requests with 503 (maintenance)"
    description: ClassVar[str] = "Answer held and new requests of ROUTE with 503 until 'start'."

    route: str
    message: str = argument(
        "", parse=arguments.message, metavar="TEXT", help="text of the 503 answer"
    )
    retry_after: int | None = argument(  # None: the route's configured retry_after
        None,
        parse=arguments.retry_after,
        metavar="DURATION",
        help="Retry-After of the 503 answer (default: the route's retry_after)",
    )

    def apply(self, state: _core.RouteState) -> Outcome:
        answered = state.held
        state.stop(self.message, self.retry_after or 0)
        return {"route": self.route, "mode": state.mode_name, "answered": answered}

    def share(self, workers: int) -> "Stop":
        return self


@plain
@dataclass(frozen=True)
class Start:
    """Serve normally again after a stop (or a pause)."""

    verb: ClassVar[str] = "start"
    help: ClassVar[str] = "serve a stopped or paused route again"
    description: ClassVar[str] = "Serve ROUTE normally again; held requests are released."

    route: str

    def apply(self, state: _core.RouteState) -> Outcome:
        state.start()
        return {"route": self.route, "mode": state.mode_name}

    def share(self, workers: int) -> "Start":
        return self


@dataclass(frozen=True)
class Reload:
    """Read the config file again (or ``config``, which later reloads read) and apply it."""

    verb: ClassVar[str] = "reload"
    help: ClassVar[str] = "apply a changed config file to a running proxy"
    description: ClassVar[str] = (
        "Read the proxy's config file again (or FILE) and apply it; held requests go to "
        "the new upstreams. An invalid config changes nothing."
    )

    config: str | None = argument(
        None,
        parse=arguments.config_path,
        from_text=os.path.abspath,  # the proxy's working directory is not the caller's
        metavar="FILE",
        help="config file to apply instead (later reloads read this one)",
    )


@dataclass(frozen=True)
class Upgrade:
    """Hand the proxy over to a new process of the installed program (``upgrade.py``)."""

    verb: ClassVar[str] = "upgrade"
    help: ClassVar[str] = "replace the running proxy with a new process, refusing no connection"
    description: ClassVar[str] = (
        "Start the installed fastpause with the same command line, hand it the listening "
        "and admin sockets and the runtime state, then let the old process finish its "
        "requests in flight and exit. If the new process cannot start (an invalid "
        "config, say), the old one serves on."
    )


# ---------------------------------------------------------------- whole data plane


@plain
@dataclass(frozen=True)
class Snapshot:
    """What a data plane serves: the config (with a worker's share of
    ``max_connections``), the IP each upstream address dials (so no worker resolves a
    name), the upstreams the health checks hold down, as (route, address) pairs, and
    each route's column in the shared held counts (``fastpause.shared_counts``)."""

    config: Config
    resolved: dict[str, str]
    unhealthy: tuple[tuple[str, str], ...]
    columns: dict[str, int]


@plain
@dataclass(frozen=True)
class Install:
    """A new routing snapshot (a reload, a deploy's switch): held requests go to the
    routes and upstreams it names; ``close_tunnels`` cuts the tunnels to upstreams it
    leaves out instead of letting them drain."""

    snapshot: Snapshot
    close_tunnels: bool = False


@plain
@dataclass(frozen=True)
class Verdict:
    """A health check's verdict on one upstream of one route (only the supervisor
    probes; every worker takes the verdict)."""

    route: str
    address: str
    healthy: bool

    def apply(self, engine: _core.Engine) -> None:
        for upstream in route_of(engine.table, self.route).upstreams:
            if upstream.address == self.address:
                engine.set_upstream_health(upstream, self.healthy)


@plain
@dataclass(frozen=True)
class LameDuck:
    """The proxy shuts down after ``shutdown_delay``: meanwhile every route's
    ``health_path`` answers 503, so an outer load balancer stops sending here before
    this proxy stops accepting."""

    def apply(self, engine: _core.Engine) -> None:
        engine.lame_duck = True


def apply(command: Command, table: _core.RoutingTable) -> Outcome:
    """Apply ``command`` to its route in ``table``; ``UnknownRoute`` if there is none."""
    return command.apply(route_state(table, command.route))


def route_state(table: _core.RoutingTable, name: str) -> _core.RouteState:
    """The runtime state of route ``name`` in ``table``."""
    return route_of(table, name).state


def route_of(table: _core.RoutingTable, name: str) -> _core.Route:
    """Route ``name`` of ``table``; ``UnknownRoute`` if it has none."""
    for route in table.routes:
        if route.name == name:
            return route
    raise UnknownRoute(name)


def mode_command(state: _core.RouteState) -> Command:
    """The command that puts a fresh route state (a new worker's) in ``state``'s mode."""
    if state.mode_name == "paused":
        return Pause(state.name, state.max_hold)
    if state.mode_name == "stopped":
        return Stop(state.name, state.stop_message, state.stop_retry_after or None)
    return Start(state.name)
