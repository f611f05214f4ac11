"""Hostile control-plane input (issue 17, finding 6): every path that reads outside
input - the config on ``run``, ``validate`` and every kind of reload, the state file
at start, admin JSON bodies - answers deep nesting, huge integers, huge files, FIFOs
and directories with a clear error, and a running proxy keeps serving.

Before ``fastpause.inputs``: ``run``/``validate`` printed a traceback and exited 1,
SIGHUP left "Task exception was never retrieved", ``POST /reload`` and such admin
bodies got no answer, a FIFO as state file hung the start and a deep one stopped it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from admin_support import AdminHttp
from deploy_support import fastpause, proxy_output, wait_for

pytest_plugins = ["hold_support", "deploy_support"]

ROUTE = '[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:1"]\n'
DIGITS = "1" + "0" * 5000


def deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


# Each writes a hostile config at ``path``; the text says what the error names.
def _nested_arrays(path: Path) -> str:
    path.write_text(f"listen = {deep_array(50_000)}\n{ROUTE}")
    return "nested too deeply"


def _nested_tables(path: Path) -> str:
    path.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n" + ROUTE)
    return "nested too deeply"


def _huge_integer(path: Path) -> str:
    path.write_text(f"max_connections = {DIGITS}\n{ROUTE}")
    return "too many digits"


def _huge_file(path: Path) -> str:
    with open(path, "wb") as file:  # sparse: nothing is written, nothing must be read
        file.truncate(1 << 30)
    return "more than the 16777216 allowed"


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "it is a FIFO, not a regular file"


def _directory(path: Path) -> str:
    path.mkdir()
    return "it is a directory, not a regular file"


HOSTILE = {
    "nested-arrays": _nested_arrays,
    "nested-tables": _nested_tables,
    "huge-integer": _huge_integer,
    "huge-file": _huge_file,
    "fifo": _fifo,
    "directory": _directory,
}


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_run_and_validate_refuse_a_hostile_config_in_one_line(tmp_path, command, kind):
    path = tmp_path / "hostile.toml"
    problem = HOSTILE[kind](path)
    args = ["run", "--config", str(path), "--admin", "off"] if command == "run" else [command]
    result = fastpause(*args, *([] if command == "run" else [str(path)]))
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: ") and problem in line, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def serving(hold_proxy, backend):
    """A running proxy whose config file can be swapped for a hostile one."""
    proxy = hold_proxy()
    assert proxy.get("/inspect").status == 200
    return proxy


def _still_serving(proxy) -> None:
    assert proxy.get("/inspect").status == 200
    assert proxy.admin.status()["routes"][0]["name"] == "app"
    assert "Task exception" not in proxy.stderr() and "Traceback" not in proxy.stderr()


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("via", ["sighup", "api", "cli"])
def test_a_hostile_config_on_reload_is_refused_and_the_proxy_keeps_serving(
    serving, tmp_path, via, kind
):
    proxy = serving
    hostile = tmp_path / f"reload-{kind}.toml"
    problem = HOSTILE[kind](hostile)
    if via == "sighup":  # SIGHUP reads the proxy's own file: swap it
        good = proxy.config_path.read_text()
        proxy.config_path.unlink()
        hostile.rename(proxy.config_path)
        os.kill(proxy.pid, signal.SIGHUP)
        line = wait_for(
            lambda: next(
                (line for line in proxy.stderr().splitlines() if "reload failed" in line), None
            ),
            what="the reload to fail",
        )
        assert problem in line, proxy_output(proxy)
        if proxy.config_path.is_dir():
            proxy.config_path.rmdir()
        else:
            proxy.config_path.unlink()
        proxy.config_path.write_text(good)
    elif via == "api":
        reply = AdminHttp(proxy.admin.spec).call("POST", "/reload", {"config": str(hostile)})
        assert reply.status == 400, reply
        assert problem in reply.json()["error"], reply
    else:
        result = fastpause("reload", "--config", str(hostile), "--admin", proxy.admin.spec)
        assert result.returncode == 1, result
        assert problem in result.stderr and "Traceback" not in result.stderr, result
    _still_serving(proxy)


STATE_FILES = {
    "nested": lambda path: path.write_text(deep_array(50_000)),
    "huge-integer": lambda path: path.write_text(f'{{"version": {DIGITS}, "routes": {{}}}}'),
    "nan": lambda path: path.write_text('{"version": NaN, "routes": {}}'),
    "huge-file": _huge_file,
    "fifo": _fifo,
    "directory": _directory,
}


@pytest.mark.parametrize("kind", STATE_FILES)
def test_a_hostile_state_file_is_reported_and_ignored_at_start(hold_proxy, tmp_path, kind):
    state = tmp_path / "state.json"
    STATE_FILES[kind](state)
    proxy = hold_proxy(top={"state_file": str(state)})
    assert f"fastpause: ignoring state file {state}: " in proxy.stderr(), proxy_output(proxy)
    assert proxy.admin.route()["mode"] == "running"
    assert "Traceback" not in proxy.stderr()


ADMIN_BODIES = {
    "nested": (deep_array(30_000).encode(), "nested too deeply"),
    "nested-in-object": (b'{"max_hold": ' + deep_array(30_000).encode() + b"}", "nested too"),
    "huge-integer": (f'{{"max_hold": {DIGITS}}}'.encode(), "more than 30 digits"),
    "nan": (b'{"max_hold": NaN}', "NaN is not a JSON value"),
    "infinity": (b'{"max_hold": -Infinity}', "-Infinity is not a JSON value"),
    "not-utf8": (b'{"max_hold": "\xff"}', "not UTF-8"),
}


@pytest.mark.parametrize("kind", ADMIN_BODIES)
@pytest.mark.parametrize("endpoint", ["/routes/app/pause", "/routes/app/deploy", "/reload"])
def test_hostile_admin_bodies_get_a_400_and_the_admin_keeps_serving(serving, endpoint, kind):
    body, problem = ADMIN_BODIES[kind]
    admin = AdminHttp(serving.admin.spec)
    reply = admin.call("POST", endpoint, body, {"Content-Type": "application/json"})
    assert reply.status == 400, reply
    assert problem in reply.json()["error"], reply
    assert serving.admin.route()["mode"] == "running"  # nothing was applied
    _still_serving(serving)
