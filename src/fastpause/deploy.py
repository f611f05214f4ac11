"""Deploys: switch a route to new targets once they pass their health check.

kamal-proxy's ``deploy`` semantics (check the new targets, swap, drain the old
ones), done with late binding: requests held while the route switches go to the
new targets, and a paused route's held requests go there when it resumes.

A deploy is a runtime *override* of the route's ``upstreams``. It outlives a
reload only while the config's list for that route is still the one the deploy
replaced: once the file names other upstreams, someone changed the config on
purpose, and the config wins. Deployed targets all have weight 1: the config's
weights belong to the config's upstreams.
"""

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from fastpause import arguments
from fastpause.arguments import DEFAULT_DRAIN_TIMEOUT, argument
from fastpause.config import Address, Config, ConfigError
from fastpause.health import CheckSettings, wait_until_healthy
from fastpause.router import resolve

DEFAULT_HEALTH_PATH = "/up"  # kamal-proxy's, and Rails' built-in health check
DEFAULT_DEPLOY_TIMEOUT = 30.0

# One line of a deploy's progress, ready to be JSON: {"event": "checking", ...}.
Event = dict[str, object]


class DeployFailed(Exception):
    """The deploy changed nothing; the message says why."""


@dataclass(frozen=True)
class Deployment:
    """A route's deployed targets, and the config's list they replaced."""

    upstreams: tuple[Address, ...]
    config_upstreams: tuple[Address, ...]


@dataclass(frozen=True)
class Deploy:
    """Switch ``route`` to the targets ``to`` once they are healthy, then drain the old
    ones. No ``health_path`` means the route's, else ``DEFAULT_HEALTH_PATH``.
    ``close_tunnels`` cuts the old targets' WebSocket tunnels at the switch
    (kamal-proxy's behaviour) instead of letting them drain."""

    verb: ClassVar[str] = "deploy"
    help: ClassVar[str] = "switch a route to new targets once they are healthy"
    description: ClassVar[str] = (
        "Health-check the new targets, switch ROUTE to them (held requests go there at "
        "once), then drain the old ones. A target that does not become healthy in time "
        "leaves the route unchanged."
    )

    route: str
    to: tuple[Address, ...] = argument(
        parse=arguments.targets, metavar="HOST:PORT", repeat=True, help="new target"
    )
    health_path: str | None = argument(
        None,
        parse=arguments.health_path,
        metavar="PATH",
        help="path checked on the new targets (default: the route's health_path, else /up)",
    )
    deploy_timeout: float = argument(
        DEFAULT_DEPLOY_TIMEOUT,
        parse=arguments.duration(allow_zero=False),
        metavar="DURATION",
        help="how long the new targets have to become healthy (default 30s)",
    )
    drain_timeout: float = argument(
        DEFAULT_DRAIN_TIMEOUT,
        parse=arguments.duration(allow_zero=True),
        metavar="DURATION",
        help="how long requests to the old targets may take to finish (default 30s)",
    )
    close_tunnels: bool = argument(
        False,
        parse=arguments.flag,
        help="cut WebSocket tunnels to the old targets at the switch instead of letting "
        "them drain (clients reconnect to the new targets)",
    )


def apply_deployments(
    config: Config, deployments: Mapping[str, Deployment]
) -> tuple[Config, dict[str, Deployment], list[str]]:
    """``config`` with the deployed upstreams in place of the configured ones.

    Returns the config to build the routing table from, the deployments still in
    force and a note for each one dropped because its route's ``upstreams`` changed
    in the config (deployments of routes that are gone are dropped silently).
    """
    routes = []
    kept: dict[str, Deployment] = {}
    notes: list[str] = []
    for route in config.routes:
        deployment = deployments.get(route.name)
        if deployment is not None and deployment.config_upstreams == route.upstreams:
            kept[route.name] = deployment
            route = replace(route, upstreams=deployment.upstreams, weights=())
        elif deployment is not None and deployment.upstreams != route.upstreams:
            notes.append(
                f"route {route.name}: upstreams changed in the config since the deploy to "
                f"{_listing(deployment.upstreams)}; using the config's "
                f"{_listing(route.upstreams)}"
            )
        routes.append(route)
    return replace(config, routes=tuple(routes)), kept, notes


def resolve_targets(targets: Sequence[Address]) -> dict[str, str]:
    """The IP of each target; blocking, so the proxy calls it in an executor.

    Raises ``DeployFailed`` naming the target that does not resolve.
    """
    resolved: dict[str, str] = {}
    for target in targets:
        try:
            resolved[str(target)] = resolve(target, None, str(target))
        except ConfigError as error:
            raise DeployFailed(str(error)) from None
    return resolved


async def check_targets(
    targets: Sequence[Address],
    resolved: Mapping[str, str],
    settings: CheckSettings,
    timeout: float,
) -> AsyncIterator[tuple[Address, str | None]]:
    """Check every target in parallel; yield (target, None or last problem) as each ends.

    A target ends when it has passed ``settings.passes`` checks in a row, or when
    ``timeout`` passes for all of them together.
    """
    deadline = asyncio.get_running_loop().time() + timeout

    async def check(target: Address) -> tuple[Address, str | None]:
        ip = resolved[str(target)]
        problem = await wait_until_healthy(target, ip, settings, deadline)
        return target, problem

    for finished in asyncio.as_completed([check(target) for target in targets]):
        yield await finished


def _listing(addresses: Sequence[Address]) -> str:
    return ", ".join(str(address) for address in addresses)
