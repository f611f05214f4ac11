"""The runtime state file: what is saved comes back, writes are atomic, and every
file that cannot be used is a ``StateFileError`` naming the file and the problem."""

import json
import os
from pathlib import Path

import pytest

from fastpause.statefile import RouteRuntime, RuntimeState, StateFileError, load, save

STATE = RuntimeState(
    {
        "app": RouteRuntime(
            upstreams=("127.0.0.1:8004", "[::1]:8005"),
            config_upstreams=("127.0.0.1:8003",),
            mode="paused",
            max_hold=12.5,
        ),
        "api": RouteRuntime(mode="stopped", stop_message="Back at noon"),
        "web": RouteRuntime(),
    }
)


def test_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save(path, STATE)
    assert load(path) == STATE


def test_the_file_is_readable_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save(path, STATE)
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert document["routes"]["app"]["upstreams"] == ["127.0.0.1:8004", "[::1]:8005"]
    assert document["routes"]["web"]["upstreams"] is None


def test_no_file_yet_is_no_state(tmp_path: Path) -> None:
    assert load(tmp_path / "state.json") is None


def test_save_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save(path, STATE)
    save(path, RuntimeState({"app": RouteRuntime(mode="stopped")}))
    assert os.listdir(tmp_path) == ["state.json"]
    assert load(path) == RuntimeState({"app": RouteRuntime(mode="stopped")})


def test_a_failed_save_keeps_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(StateFileError) as caught:
        save(path, STATE)
    assert str(caught.value) == f"{path}: cannot write: Is a directory"
    assert os.listdir(tmp_path) == ["state"]


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "state.json"
    with pytest.raises(StateFileError) as caught:
        save(path, STATE)
    assert str(caught.value) == f"{path}: cannot write: No such file or directory"


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "state.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def assert_unusable(path: Path, problem: str) -> None:
    with pytest.raises(StateFileError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: {problem}"), str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    assert_unusable(tmp_path, "cannot read file: it is a directory, not a regular file")


@pytest.mark.parametrize("content", ['{"version": 1, "routes": {', b"\xff\xfe", "", "null garbage"])
def test_corrupt_file(tmp_path: Path, content: str | bytes) -> None:
    assert_unusable(write(tmp_path, content), "not valid JSON")


@pytest.mark.parametrize("content", ["[]", "{}", '{"routes": {}}', '"state"'])
def test_not_a_state_file(tmp_path: Path, content: str) -> None:
    assert_unusable(write(tmp_path, content), "not a fastpause state file")


@pytest.mark.parametrize("version", ["2", '"1"', "null"])
def test_wrong_version(tmp_path: Path, version: str) -> None:
    path = write(tmp_path, f'{{"version": {version}, "routes": {{}}}}')
    assert_unusable(path, f"unsupported version {json.loads(version)!r}")


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ("[]", "routes.app: expected an object"),
        ('{"mode": "sleeping"}', "routes.app.mode: expected one of running, paused, stopped"),
        ('{"max_hold": 0}', "routes.app.max_hold: expected a number of seconds above 0"),
        ('{"max_hold": "30s"}', "routes.app.max_hold: expected a number of seconds"),
        ('{"max_hold": true}', "routes.app.max_hold: expected a number of seconds"),
        ('{"max_hold": NaN}', "not valid JSON: NaN is not a JSON value"),
        ('{"max_hold": Infinity}', "not valid JSON: Infinity is not a JSON value"),
        ('{"max_hold": 1e18}', "routes.app.max_hold: expected a number of seconds above 0 and"),
        ('{"stop_message": 5}', "routes.app.stop_message: expected a string"),
        (
            '{"upstreams": [], "config_upstreams": ["127.0.0.1:1"]}',
            "routes.app.upstreams: expected a non-empty list of HOST:PORT strings",
        ),
        (
            '{"upstreams": ["nowhere"], "config_upstreams": ["127.0.0.1:1"]}',
            "routes.app.upstreams: invalid address 'nowhere'",
        ),
        (
            '{"upstreams": ["127.0.0.1:2"]}',
            "routes.app: upstreams and config_upstreams go together",
        ),
    ],
)
def test_bad_route_entries(tmp_path: Path, route: str, problem: str) -> None:
    path = write(tmp_path, f'{{"version": 1, "routes": {{"app": {route}}}}}')
    assert_unusable(path, problem)


def test_routes_must_be_an_object(tmp_path: Path) -> None:
    assert_unusable(write(tmp_path, '{"version": 1, "routes": []}'), "routes: expected an object")
