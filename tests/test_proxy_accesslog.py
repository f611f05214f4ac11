"""Access log lines on stdout, in common and JSON format, and off by default."""

from __future__ import annotations

import json
import re
from datetime import datetime

from helpers import build_request, free_port

CLF = re.compile(r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-)$')


def log_line(proxy, needle: str, start: int = 0) -> str:
    line = proxy.output.wait_for(
        lambda s: needle in s and not s.startswith("fastpause:"), timeout=30, start=start
    )
    assert line is not None, f"no access log line containing {needle!r}:\n{proxy.describe()}"
    return line


def test_common_format_line(proxy_factory):
    proxy = proxy_factory(top={"access_log": "stdout", "access_log_format": "common"})
    resp = proxy.get("/download?size=1234&x=1")
    assert resp.status == 200
    line = log_line(proxy, "/download?size=1234&x=1")
    m = CLF.match(line)
    assert m, line
    ip, ident, user, when, request_line, status, size = m.groups()
    assert ip == "127.0.0.1"
    assert (ident, user) == ("-", "-")
    datetime.strptime(when, "%d/%b/%Y:%H:%M:%S %z")
    assert request_line == "GET /download?size=1234&x=1 HTTP/1.1"
    assert status == "200"
    assert size == "1234"  # body bytes sent, as in Apache's and NGINX's common format


def test_common_format_logs_each_request_with_its_status(proxy_factory):
    proxy = proxy_factory(top={"access_log": "stdout"})
    with proxy.conn() as conn:
        for target in ("/status/404?a", "/status/503?b", "/status/204?c"):
            conn.send(build_request("GET", target))
            conn.read_response()
    for target, status in (
        ("/status/404?a", "404"),
        ("/status/503?b", "503"),
        ("/status/204?c", "204"),
    ):
        m = CLF.match(log_line(proxy, target))
        assert m, target
        assert m.group(6) == status


def test_common_format_logs_http10_and_post(proxy_factory):
    proxy = proxy_factory(top={"access_log": "stdout"})
    resp = proxy.request(b"POST /echo?v=10 HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
    assert resp.status == 200
    m = CLF.match(log_line(proxy, "/echo?v=10"))
    assert m
    assert m.group(5) == "POST /echo?v=10 HTTP/1.0"
    assert m.group(7) == "3"


def test_proxy_errors_are_logged(proxy_factory):
    proxy = proxy_factory(
        top={"access_log": "stdout"},
        route={"try_duration": "0s"},  # no holding: a refused upstream is a 502 at once
        upstreams=[f"127.0.0.1:{free_port()}"],
    )
    assert proxy.get("/refused-upstream").status == 502
    m = CLF.match(log_line(proxy, "/refused-upstream"))
    assert m and m.group(6) == "502"


def test_bad_request_is_logged_with_its_request_line(proxy_factory):
    proxy = proxy_factory(top={"access_log": "stdout"})
    resp = proxy.request(b"GET /bad-one HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert resp.status == 400
    assert proxy.get("/status/200?marker").status == 200
    log_line(proxy, "/status/200?marker")  # lines are written in order
    lines = [s for s in proxy.output.snapshot() if not s.startswith("fastpause:")]
    assert len(lines) == 2, lines
    m = CLF.match(lines[0])
    assert m, lines[0]
    assert m.group(6) == "400"
    assert m.group(5) == "GET /bad-one HTTP/1.1"


def test_json_format_line(proxy_factory, backend):
    proxy = proxy_factory(top={"access_log": "stdout", "access_log_format": "json"})
    resp = proxy.request(build_request("PUT", "/echo?j=1", body=b"12345"))
    assert resp.status == 200
    line = log_line(proxy, "/echo?j=1")
    record = json.loads(line)
    assert isinstance(record, dict)
    values = list(record.values())
    assert "127.0.0.1" in values
    assert "PUT" in values
    assert "/echo?j=1" in values
    assert 200 in values
    assert 5 in values  # response body bytes
    assert any(isinstance(v, str) and backend.address in v for v in values), record


def test_json_lines_one_per_request(proxy_factory):
    proxy = proxy_factory(top={"access_log": "stdout", "access_log_format": "json"})
    with proxy.conn() as conn:
        for i in range(10):
            conn.send(build_request("GET", f"/status/200?n={i}"))
            assert conn.read_response().status == 200
    log_line(proxy, "/status/200?n=9")
    records = [json.loads(s) for s in proxy.output.snapshot() if s.startswith("{")]
    targets = [
        v for r in records for v in r.values() if isinstance(v, str) and v.startswith("/status/")
    ]
    assert targets == [f"/status/200?n={i}" for i in range(10)]


def test_access_log_off_by_default(proxy):
    assert proxy.get("/status/200?quiet=1").status == 200
    proxy.terminate()
    assert proxy.wait(60) == 0
    proxy.output.join()
    assert not [s for s in proxy.output.snapshot() if "quiet=1" in s]
