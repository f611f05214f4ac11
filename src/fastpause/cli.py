"""The ``fastpause`` command: ``run``, ``validate``, ``version`` and the admin
commands ``pause``, ``resume``, ``stop``, ``start``, ``status``, ``reload`` and
``deploy``.

Exit status: 0 success, 1 the proxy could not start or run (port in use), or an
admin command failed (no proxy answering, an unknown route), 2 the user asked
for something invalid (bad config, bad options). Errors are one clear line on
stderr, never a traceback.
"""

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

from fastpause import __version__
from fastpause.admin_client import AdminClient, AdminRefused, AdminUnavailable
from fastpause.arguments import DEFAULT_DRAIN_TIMEOUT, Declared, add_flags, body
from fastpause.commands import Pause, Reload, Resume, Start, Stop, Upgrade
from fastpause.config import (
    AdminAddress,
    Config,
    ConfigError,
    Overrides,
    default_admin_address,
    default_config,
    load,
    parse_admin_address,
    quick_config,
)
from fastpause.console import plural
from fastpause.deploy import DEFAULT_DEPLOY_TIMEOUT, Deploy
from fastpause.router import build_table, describe_match
from fastpause.server import Server
from fastpause.units import parse_duration
from fastpause.upgrade import report_failure

EXIT_FAILURE = 1
EXIT_USAGE = 2
ADMIN_ENV = "FASTPAUSE_ADMIN"
TOKEN_ENV = "FASTPAUSE_ADMIN_TOKEN"
# How much longer than the drain timeout ``pause`` waits for the proxy's answer.
ANSWER_MARGIN = 10.0
# A reload waits for a deploy in progress (its health checks may take the whole
# deploy timeout) before it runs.
RELOAD_TIMEOUT = DEFAULT_DEPLOY_TIMEOUT * 4
# The longest quiet stretch of an upgrade: the old process's requests in flight may
# take its whole shutdown_timeout, which the command line does not know.
UPGRADE_QUIET = 3600.0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m fastpause``."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except (AdminUnavailable, AdminRefused) as error:
        print(f"fastpause: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


def _parser() -> argparse.ArgumentParser:
    """The command line; each subcommand stores its handler in ``args.handler``."""
    parser = argparse.ArgumentParser(
        prog="fastpause",
        description="HTTP/1.1 reverse proxy that holds traffic during deploys.",
    )
    parser.add_argument("--version", action="version", version=f"fastpause {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the proxy",
        description="Run the proxy. Without options: listen on 127.0.0.1:8080 and "
        "forward to 127.0.0.1:8003.",
    )
    run.add_argument("--config", metavar="FILE", help="TOML config file")
    run.add_argument(
        "--listen",
        metavar="ADDR",
        action="append",
        default=[],
        help="HOST:PORT to listen on (repeatable; default 127.0.0.1:8080)",
    )
    run.add_argument(
        "--to",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="upstream to forward to (repeatable; default 127.0.0.1:8003)",
    )
    run.add_argument(
        "--admin",
        metavar="ADDR",
        help="admin API address: unix:PATH, HOST:PORT or off (overrides the config file)",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        help="worker processes serving the data plane: a number or 'auto', one per usable "
        "CPU (overrides the config file)",
    )
    run.set_defaults(handler=_run, subparser=run)

    validate = commands.add_parser(
        "validate", help="check a config file", description="Check a config file and exit."
    )
    validate.add_argument("file", metavar="FILE", help="TOML config file")
    validate.set_defaults(handler=_validate)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    _add_admin_commands(commands)
    return parser


def _add_admin_commands(commands: Any) -> None:
    """``pause``, ``resume``, ``stop``, ``start`` and ``status``: requests to a running proxy."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--admin",
        metavar="ADDR",
        help=f"admin API of the proxy: unix:PATH or HOST:PORT (default: ${ADMIN_ENV}, "
        f"else {default_admin_address()})",
    )
    connection.add_argument("--token", metavar="TOKEN", help=f"admin token (default: ${TOKEN_ENV})")

    for command, handler in ((Pause, _pause), (Resume, _resume), (Stop, _stop), (Start, _start)):
        _add_command(commands, connection, command).set_defaults(handler=handler)

    status = commands.add_parser(
        "status",
        parents=[connection],
        help="show the routes of a running proxy",
        description="Show each route's mode, held and in-flight requests and upstreams.",
    )
    status.add_argument("--json", action="store_true", help="print the admin API's JSON")
    status.add_argument(
        "--workers",
        action="store_true",
        help="also show each worker process: its connections, held and in-flight requests",
    )
    status.set_defaults(handler=_status)

    _add_command(commands, connection, Reload).set_defaults(handler=_reload)
    _add_command(commands, connection, Deploy).set_defaults(handler=_deploy)
    _add_command(commands, connection, Upgrade).set_defaults(handler=_upgrade)


def _add_command(
    commands: Any, connection: argparse.ArgumentParser, command: type[Declared]
) -> argparse.ArgumentParser:
    """The subcommand of a control command, from the command's own declaration."""
    parser = commands.add_parser(
        command.verb, parents=[connection], help=command.help, description=command.description
    )
    if "route" in {field.name for field in dataclasses.fields(command)}:
        parser.add_argument("route", metavar="ROUTE")
    add_flags(parser, command)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Start the proxy from a config file, from --listen/--to, or from the defaults."""
    if args.config is not None and (args.listen or args.to):
        args.subparser.error(
            "--config cannot be combined with --listen or --to: "
            "put the listen addresses and upstreams in the config file"
        )
    overrides = Overrides(admin=args.admin, workers=args.workers)
    try:
        config = overrides.apply(_run_config(args))
    except ConfigError as error:  # a process started by ``upgrade`` tells the old one
        report_failure(str(error))
        raise
    return Server(config, config_path=args.config, overrides=overrides).run()


def _run_config(args: argparse.Namespace) -> Config:
    if args.config is not None:
        return load(args.config)
    if args.listen or args.to:
        return quick_config(args.listen, args.to)
    return default_config()


def _validate(args: argparse.Namespace) -> int:
    """Load the file and build its routing table, as ``run`` would, without binding."""
    config = load(args.file)
    build_table(config)  # resolves upstream host names: a name that fails here fails at run
    routes, listeners = len(config.routes), len(config.listen)
    print(f"{args.file}: ok ({plural(routes, 'route')}, {plural(listeners, 'listener')})")
    return 0


def _version(args: argparse.Namespace) -> int:
    """Also available as ``--version``, for scripts that expect either."""
    print(f"fastpause {__version__}")
    return 0


def _pause(args: argparse.Namespace) -> int:
    """Pause, and say whether the route drained: a deploy script proceeds on it."""
    drain = _seconds(args.drain_timeout, DEFAULT_DRAIN_TIMEOUT)
    outcome = _post(args, Pause, drain + ANSWER_MARGIN)
    if outcome["drained"]:
        print(f"{args.route}: paused; drained, {outcome['in_flight']} in flight")
    else:
        waited = f"{outcome['waited_seconds']:.3g}s"
        print(f"{args.route}: paused; {outcome['in_flight']} still in flight after {waited}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    outcome = _post(args, Resume)
    held = plural(outcome["released"], "held request")
    if outcome["rate"] is None:
        print(f"{args.route}: resumed; released {held}")
    else:
        print(f"{args.route}: resumed; releasing {held} at {outcome['rate']:g}/s")
    return 0


def _stop(args: argparse.Namespace) -> int:
    outcome = _post(args, Stop)
    held = plural(outcome["answered"], "held request")
    print(f"{args.route}: stopped; answered {held} with 503")
    return 0


def _start(args: argparse.Namespace) -> int:
    _post(args, Start)
    print(f"{args.route}: started")
    return 0


def _post(args: argparse.Namespace, command: type[Declared], timeout: float | None = None) -> Any:
    """Send a route command with the arguments the user gave."""
    path = _action(args.route, command.verb)
    if timeout is None:
        return _client(args).post(path, body(command, args))
    return _client(args).post(path, body(command, args), timeout)


def _status(args: argparse.Namespace) -> int:
    status = _client(args).get("/status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(_status_text(status))
        if args.workers:
            print()
            print(_workers_text(status))
    return 0


def _reload(args: argparse.Namespace) -> int:
    outcome = _client(args).post("/reload", body(Reload, args), RELOAD_TIMEOUT)
    for note in outcome["notes"]:
        print(note)
    print(f"reloaded {outcome['config']}: {plural(outcome['routes'], 'route')}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    """Print each step as the proxy reports it; exit 1 when the deploy failed."""
    deploy_timeout = _seconds(args.deploy_timeout, DEFAULT_DEPLOY_TIMEOUT)
    drain_timeout = _seconds(args.drain_timeout, DEFAULT_DRAIN_TIMEOUT)
    # The longest quiet stretch: waiting for another deploy, then our own checks or drain.
    quiet = 2 * deploy_timeout + drain_timeout + ANSWER_MARGIN
    events = _client(args).stream(_action(args.route, Deploy.verb), body(Deploy, args), quiet)
    return _follow(
        events,
        lambda event: _deploy_step(args.route, event),
        failed=f"{args.route}: deploy failed",
        cut=f"{args.route}: the proxy ended the deploy's answer before it was done",
    )


def _upgrade(args: argparse.Namespace) -> int:
    """Print each step as the old process reports it; exit 1 when the upgrade failed
    (the old process then serves on)."""
    return _follow(
        _client(args).stream("/upgrade", {}, UPGRADE_QUIET),
        _upgrade_step,
        failed="upgrade failed",
        cut="the old process ended its answer before the upgrade was done",
    )


def _follow(
    events: Iterable[dict[str, Any]],
    step: Callable[[dict[str, Any]], str | None],
    *,
    failed: str,
    cut: str,
) -> int:
    """Print a streamed answer's steps as they come: 0 at ``done``, 1 at ``failed``
    or when the stream ends before either."""
    for event in events:
        if event.get("event") == "failed":
            print(f"fastpause: {failed}: {event['error']}", file=sys.stderr)
            return EXIT_FAILURE
        line = step(event)
        if line is not None:
            print(line, flush=True)
        if event.get("event") == "done":
            return 0
    print(f"fastpause: {cut}", file=sys.stderr)
    return EXIT_FAILURE


def _upgrade_step(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "started":
        return f"started pid {event['pid']}"
    if kind == "loaded":
        return f"the new process loaded its config ({plural(event['routes'], 'route')})"
    if kind == "handed_over":
        listeners = plural(event["listeners"], "listener")
        line = (
            f"pid {event['pid']} took over {listeners}, the admin API, "
            f"{plural(event['held'], 'held request')} and "
            f"{plural(event['idle'], 'idle connection')}"
        )
        if event["held_staying"]:
            staying = plural(event["held_staying"], "held request")
            line += f"; {staying} still receiving a body answered 503"
        return line
    if kind == "warning":
        return f"warning: {event['error']}"
    if kind == "draining":
        return f"the old process finishes {plural(event['in_flight'], 'request')} in flight"
    if kind == "done":
        return f"done: the old process (pid {event['pid']}) exits"
    return None


def _deploy_step(route: str, event: dict[str, Any]) -> str | None:
    """A deploy event as a line for people; None for events this version does not know."""
    kind = event.get("event")
    if kind == "checking":
        return f"{route}: checking {', '.join(event['targets'])} at {event['health_path']}"
    if kind == "healthy":
        return f"{route}: {event['target']} is healthy"
    if kind == "switched":
        released = plural(event["held_released"], "held request")
        return f"{route}: switched {', '.join(event['from'])} -> {', '.join(event['to'])} " + (
            f"({released} released)"
        )
    if kind == "draining":
        if not event["upstreams"]:
            return f"{route}: nothing to drain"
        cut = "; WebSocket tunnels cut" if event.get("tunnels_closed") else ""
        return (
            f"{route}: draining {', '.join(event['upstreams'])} "
            f"({event['in_flight']} in flight{cut})"
        )
    if kind == "done":
        if event["drained"]:
            return f"{route}: done"
        return f"{route}: done; requests still in flight at the drain timeout were cut"
    return None


def _seconds(option: str | None, default: float) -> float:
    return default if option is None else parse_duration(option)


def _status_text(status: dict[str, Any]) -> str:
    """A summary line, then one table row per route."""
    listeners = ", ".join(status["listeners"]) or "nothing"
    workers = status.get("workers", 1)
    processes = f"pid {status['pid']}" + (f", {workers} workers" if workers > 1 else "")
    summary = (
        f"fastpause {status['version']} ({processes}), "
        f"up {_age(status['uptime_seconds'])}, listening on {listeners}"
    )
    restarts = status.get("worker_restarts", 0)
    if restarts:
        summary += f"; {plural(restarts, 'worker restart')}"
    if not status.get("accepting", True):
        summary += (
            f"; connection limit {status['max_connections']} reached, not accepting "
            f"({status['connections']} open)"
        )
    header = ["ROUTE", "MATCH", "MODE", "HELD", "OLDEST HELD", "IN FLIGHT", "LB", "UPSTREAMS"]
    rows = [header]
    for route in status["routes"]:
        age = route["oldest_held_age_seconds"]
        rows.append(
            [
                route["name"],
                describe_match(route["hosts"], route["path_prefix"], route["strip_path_prefix"]),
                route["mode"],
                str(route["held"]),
                "-" if age is None else _age(age),
                str(route["in_flight"]),
                route["lb"],
                ", ".join(_upstream_text(upstream) for upstream in route["upstreams"]),
            ]
        )
    return "\n".join([summary, "", _table(rows)])


def _workers_text(status: dict[str, Any]) -> str:
    """One row per worker process; a single process says it serves alone."""
    details = status.get("worker_details", [])
    if not details:
        return f"one process serves (pid {status['pid']}): no workers"
    rows = [["WORKER", "PID", "UP", "CONNECTIONS", "HELD", "IN FLIGHT", "REQUESTS"]]
    for worker in details:
        rows.append(
            [
                str(worker["index"]),
                str(worker["pid"]),
                _age(worker["uptime_seconds"]),
                str(worker["connections"]),
                str(worker["held"]),
                str(worker["in_flight"]),
                str(worker["requests"]),
            ]
        )
    return _table(rows)


def _table(rows: list[list[str]]) -> str:
    """Columns left-aligned to their widest cell."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _upstream_text(upstream: dict[str, Any]) -> str:
    """The address, its weight unless 1, marked when the upstream gets no new requests."""
    notes = []
    if upstream.get("weight", 1) != 1:
        notes.append(f"weight {upstream['weight']}")
    if not upstream.get("healthy", True):
        notes.append("unhealthy")
    elif upstream.get("down"):
        notes.append("down")
    return f"{upstream['address']} ({', '.join(notes)})" if notes else str(upstream["address"])


def _age(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h01m``: precise when short, short when long."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _client(args: argparse.Namespace) -> AdminClient:
    """The admin API named by --admin, $FASTPAUSE_ADMIN or the default socket."""
    return AdminClient(_admin_address(args.admin), args.token or os.environ.get(TOKEN_ENV))


def _admin_address(option: str | None) -> AdminAddress:
    """The admin address from the option, else the environment, else the default."""
    if option is not None:
        return _parse_admin(option, "command line", "--admin")
    if os.environ.get(ADMIN_ENV):
        return _parse_admin(os.environ[ADMIN_ENV], "environment", ADMIN_ENV)
    return default_admin_address()


def _parse_admin(text: str, source: str, where: str) -> AdminAddress:
    """A client needs a real address: errors name the option or variable it came from."""
    try:
        address = parse_admin_address(text)
    except ValueError as error:
        raise ConfigError(source, where, str(error)) from None
    if address is None:
        raise ConfigError(source, where, "'off' names no proxy: give unix:PATH or HOST:PORT")
    return address


def _action(route: str, action: str) -> str:
    """``/routes/ROUTE/ACTION``; the name is quoted so a stray '/' cannot change the path."""
    return f"/routes/{quote(route, safe='')}/{action}"
