"""Route control actions as plain command objects.

Every control action is a small frozen dataclass applied to a route's
``RouteState`` by one function, ``apply``. Commands hold only plain values, so
the same objects can later be sent to several worker processes or to a fleet of
proxies and applied there unchanged (DESIGN.md, "Two planes, one boundary").
"""

from dataclasses import dataclass, replace
from typing import Any, Protocol

from fastpause import _core
from fastpause.wire import plain

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
    """Hold new requests, each for at most ``max_hold`` seconds; in-flight ones finish."""

    route: str
    max_hold: float = 30.0

    def apply(self, state: _core.RouteState) -> Outcome:
        state.pause(self.max_hold)
        return {"route": self.route, "mode": state.mode_name}

    def share(self, workers: int) -> "Pause":
        return self


@plain
@dataclass(frozen=True)
class Resume:
    """Release held requests in arrival order, all at once or ``rate`` per second."""

    route: str
    rate: float | None = None

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

    route: str
    message: str = ""
    retry_after: int | None = None  # None: the route's configured retry_after

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

    route: str

    def apply(self, state: _core.RouteState) -> Outcome:
        state.start()
        return {"route": self.route, "mode": state.mode_name}

    def share(self, workers: int) -> "Start":
        return self


def apply(command: Command, table: _core.RoutingTable) -> Outcome:
    """Apply ``command`` to its route in ``table``; ``UnknownRoute`` if there is none."""
    return command.apply(route_state(table, command.route))


def route_state(table: _core.RoutingTable, name: str) -> _core.RouteState:
    """The runtime state of route ``name`` in ``table``."""
    for route in table.routes:
        if route.name == name:
            return route.state
    raise UnknownRoute(name)


def mode_command(state: _core.RouteState) -> Command:
    """The command that puts a fresh route state (a new worker's) in ``state``'s mode."""
    if state.mode_name == "paused":
        return Pause(state.name, state.max_hold)
    if state.mode_name == "stopped":
        return Stop(state.name, state.stop_message, state.stop_retry_after or None)
    return Start(state.name)
