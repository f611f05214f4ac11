"""The ``fastpause`` command: ``run``, ``validate`` and ``version``.

Exit status: 0 success, 1 the proxy could not start or run (port in use), 2 the
user asked for something invalid (bad config, bad options). User errors are
one clear line on stderr, never a traceback.
"""

import argparse
import sys
from collections.abc import Sequence

from fastpause import __version__
from fastpause.config import ConfigError, default_config, load, quick_config
from fastpause.router import build_table
from fastpause.server import Server

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m fastpause``."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
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
    run.set_defaults(handler=_run, subparser=run)

    validate = commands.add_parser(
        "validate", help="check a config file", description="Check a config file and exit."
    )
    validate.add_argument("file", metavar="FILE", help="TOML config file")
    validate.set_defaults(handler=_validate)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Start the proxy from a config file, from --listen/--to, or from the defaults."""
    if args.config is not None:
        if args.listen or args.to:
            args.subparser.error(
                "--config cannot be combined with --listen or --to: "
                "put the listen addresses and upstreams in the config file"
            )
        config = load(args.config)
    elif args.listen or args.to:
        config = quick_config(args.listen, args.to)
    else:
        config = default_config()
    return Server(config).run()


def _validate(args: argparse.Namespace) -> int:
    """Load the file and build its routing table, as ``run`` would, without binding."""
    config = load(args.file)
    build_table(config)  # resolves upstream host names: a name that fails here fails at run
    routes, listeners = len(config.routes), len(config.listen)
    print(f"{args.file}: ok ({_count(routes, 'route')}, {_count(listeners, 'listener')})")
    return 0


def _version(args: argparse.Namespace) -> int:
    """Also available as ``--version``, for scripts that expect either."""
    print(f"fastpause {__version__}")
    return 0


def _count(number: int, noun: str) -> str:
    """``1 route``, ``2 routes``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
